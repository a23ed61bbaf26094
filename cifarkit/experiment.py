"""The one call a script's main() makes: flags -> checks -> data -> train each config -> files.

Exit status: 0 every selected config finished; 1 a config diverged, ran out of memory or a
file could not be written; 2 bad input (nothing trained, nothing written); 130 / 143
stopped by SIGINT / SIGTERM after saving a checkpoint.
"""
import ast
import contextlib
import hashlib
import inspect
import os
import shlex
import signal
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from . import checkpoints, cli, config, data, ledger, outputs, train
from . import runtime as rt
from .errors import UserError
from .results import (PLOT_FILES, config_entry, is_best, locked, outcome, save_json, settings,
                      summary)

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
EXIT_WRITE_FAILED = 1  # the same status as a failed config, as the README says


def run(*, script, description, build_model, configs, out_dir, results_file,
        normalization, default_device="auto", model_settings=None, data_parallel=False,
        weights_file="config_{number}.pth", log_every=0, cpu_amp=False, argv=None):
    """Run a report script; returns its exit status.

    ``build_model(config)`` returns a fresh model; ``model_settings`` declares the config
    keys it reads (see config.model_rules); ``normalization`` is (mean, std) per
    channel; ``log_every`` > 0 prints the running loss every that many mini-batches;
    ``data_parallel`` wraps the model in nn.DataParallel when several GPUs are visible
    (under torchrun every script uses DistributedDataParallel instead); ``cpu_amp`` makes
    --amp auto use bf16 on CPUs that have it in hardware (for models measured faster so).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    _plain_console()
    names = ledger.Names(Path(script).name, results_file, weights_file)
    args = cli.parse_args(names.script, description, out_dir, default_device, argv, cpu_amp)
    out = Path(args.out)
    with contextlib.ExitStack() as cleanup:
        preparing = contextlib.ExitStack()  # until training installs its own handlers
        try:
            preparing.enter_context(_sigterm_as_interrupt())
            all_configs = _checked_configs(configs, model_settings, args)
            selected = cli.select_configs(all_configs, args.configs)
            cli.check_subset(args.subset, selected)
            rt.check_device_request(args.device)
            # Every rank loads (downloads) before the ranks wait on each other: a slow first
            # download must not run into the process group's timeout.
            dataset = _load_data(args, script, argv)
            runtime = rt.init_runtime(args.device, data_parallel, args.amp, args.compile,
                                      cpu_amp)
            cleanup.callback(rt.close, runtime)
            _check_configs_fit_ranks(selected, runtime)
            models = {f"config_{number}": model_fingerprint(_built(build_model, chosen, number))
                      for number, chosen in enumerate(all_configs, start=1)}
            bytes_needed = _bytes_needed(build_model(selected[0][1]))
            rt.from_main(lambda: outputs.check_out_dir(
                args.out, bytes_needed, args.data_dir or data.DEFAULT_ROOT,
                _kit_names(names, selected, args)), runtime)
            results = outputs.new_results(names.script, dataset, normalization, runtime,
                                          args.seed, argv)
            # One run per folder: the lock is held until the run ends (rank 0 writes files).
            rt.from_main(lambda: cleanup.enter_context(locked(out)) and None, runtime)
            configs = _ledger_configs(all_configs, selected, models, model_settings, args)
            settled = rt.from_main(lambda: _settle(out, names, results, configs, args), runtime)
            job = Run(runtime=runtime, out=out, build_model=build_model, models=models,
                      weights_file=weights_file, log_every=log_every, run_data=results["data"],
                      say=_print if runtime.is_main else _silent)
            _show_folder(job, script, dataset, normalization, results, settled)
            job.epochs_to_train = _epochs_to_train(selected, args.seeds, results)
        except UserError as error:
            if rt.is_main_process():
                _print(f"error: {error}", file=sys.stderr)
            elif rt.launched_by_torchrun():
                # Every rank meets the same refusal, and torchrun stops the others as soon
                # as one has left: rank 0 was seen stopped before it had printed why.
                time.sleep(3)
            return 2
        except KeyboardInterrupt as interrupt:
            signum = getattr(interrupt, "signum", signal.SIGINT)
            if rt.is_main_process():
                name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                _print(f"\nStopped by {name} before training started; nothing was trained.",
                       file=sys.stderr)
            return SIGNAL_EXIT[signum]
        except OSError as error:  # the PNGs redrawn after a move, on a full disk say
            return _write_failed(out, error)
        finally:
            preparing.close()
        try:
            status = _train_selected(script, argv, args, job, selected, results, results_file)
        except UserError as error:  # found only once training began: a damaged checkpoint
            if runtime.is_main:
                _print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once, what was saved stays
            say = print if runtime.is_main else _silent
            say(f"\nStopped at once. What was saved stays: finished configs in "
                f"{out / results_file}, the unfinished one's checkpoint (from its last "
                f"epoch's end) in {out / 'checkpoints'}/.\n"
                f"{_resume_hint(script, argv, runtime.distributed)}", file=sys.stderr)
            return SIGNAL_EXIT[signal.SIGINT]
        except OSError as error:  # disk full, folder removed: what was saved before stays
            return _write_failed(out, error)  # no barrier: the other ranks cannot know of it
        except RuntimeError as error:  # dist.DistError is one; gloo raises plain ones
            if not (runtime.distributed and _peer_lost(error)):
                raise
            _print(f"error: rank {runtime.rank} lost contact with the other ranks "
                  f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Another "
                  f"worker has probably died. Checkpoints are saved at every epoch's end in "
                  f"{out / 'checkpoints'}/. {_resume_hint(script, argv, True)} (torchrun "
                  f"--max-restarts=3 restarts the workers by itself).", file=sys.stderr)
            return EXIT_WRITE_FAILED
        # Every rank leaves together: a rank that tore its process group down while rank 0
        # was still writing files was once seen to abort ("terminate called without an
        # active exception", gloo, CI), and a rank leaving with status 1 (a config failed)
        # makes torchrun stop the others, rank 0 perhaps before it has written the results.
        rt.barrier(runtime)
        return status


def _write_failed(out, error):
    _print(f"error: cannot write to {out}: {error}. Results saved so far are kept; once that "
           f"is fixed, rerun the same command to carry on.", file=sys.stderr)
    return EXIT_WRITE_FAILED


def _built(build_model, chosen, number):
    """``build_model(chosen)``, refused by name when it is not a model."""
    model = build_model(chosen)
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"config_{number}: build_model(config) must return a torch.nn.Module; "
                        f"it returned {type(model).__name__}.")
    return model


def _peer_lost(error):
    """Whether ``error`` says another rank went away (killed, crashed) mid-collective."""
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer",
                                  "remote worker", "Broken pipe"))


def _command(script, argv):
    """The command that ran this script, as one can paste it (paths with spaces quoted)."""
    path, typed = Path(script).absolute(), sys.argv[0]
    if typed and Path(typed).absolute() == path:
        shown = typed  # as the user typed it
    else:
        shown = min(str(path), os.path.relpath(path), key=len)
    return shlex.join(["python", shown, *argv])


def _resume_hint(script, argv, distributed):
    """How to carry on, with the command on a line of its own so it can be copied."""
    if distributed:
        return "To resume, run the same torchrun command again"
    return "To resume, run the same command:\n  " + _command(script, argv)


def _print(*args, file=None, **kwargs):
    """print, for a run that must go on when nobody reads it any more: a closed pipe or a
    full device under stdout silences the run's messages, never stops its training."""
    stream = file or sys.stdout
    try:
        print(*args, file=stream, **kwargs)
    except OSError:
        null = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
        if stream is sys.stderr:
            sys.stderr = null
        else:
            sys.stdout = null


def _plain_console():
    """A console that cannot show "±" (an ASCII-only locale) gets "+/-"-like escapes instead
    of an error at the summary."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def _kit_names(names, selected, args):
    """The files this run may write in its folder, relative to it (to find what is in the
    way before anything trains)."""
    written = [names.results_file, *PLOT_FILES]
    for number, _ in selected:
        for seed in range(args.seed, args.seed + args.seeds):
            written.append(ledger.weights_name(names.weights_file, number, seed, args.seed))
            written.append(f"{ledger.CHECKPOINTS}/config_{number}_seed{seed}.ckpt")
    return written


def _ledger_configs(all_configs, selected, models, model_settings, args):
    checked = {f"config_{number}": chosen for number, chosen in enumerate(all_configs, 1)}
    neutral = config.neutral_values(model_settings)
    return ledger.Configs(
        checked=checked, neutral=neutral,
        identity={label: (ledger.config_identity(chosen, neutral), models[label])
                  for label, chosen in checked.items()},
        selected=[f"config_{number}" for number, _ in selected], every=args.configs is None)


def _settle(out, names, results, configs, args):
    """Match the folder's earlier results to CONFIGS and carry out what that asks (renames,
    moves aside, --restart) as one transaction; return (the results this run carries on,
    or None; the lines saying what moved). Rank 0 only."""
    earlier, completed = ledger.open_folder(out, names)
    everything = "--restart" if args.restart and configs.every else \
        ledger.whole_folder_problem(out, names, earlier, results)
    plan = ledger.Plan(everything=everything)
    if not everything:
        readable, unusable = ledger.read_checkpoints(out, checkpoints.identity)
        found = ledger.found_configs(earlier, readable, results, configs.neutral)
        plan = ledger.plan(found, configs, args.restart, bool(args.epochs), unusable)
        precisions = {ledger.CHECKPOINT_NAME.fullmatch(path.name)["label"]:
                      identity.get("precision") for path, identity in readable.items()
                      if identity.get("precision")}
        ledger.blocked_checkpoints(plan, unusable, precisions, results["precision"],
                                   configs.selected)
    kept, lines = ledger.carry_out(out, names, earlier, plan, configs.checked)
    return kept, completed + lines


def _show_folder(job, script, dataset, normalization, results, settled):
    """Say what moved, carry on from the results kept (the PNGs redrawn to show them), put
    the data on the device. Before training: a signal here stops the run as one while the
    data loads does."""
    out, runtime, say = job.out, job.runtime, job.say
    kept, lines = settled
    for line in lines:
        say(line)
    if kept:  # every rank, the same as rank 0's JSON
        results.update(started=kept["started"], configs=kept["configs"])
        if runtime.is_main and lines:  # the PNGs show what the folder holds
            outputs.plot_run(results["configs"], out, results["script"], job.log_every,
                             run=results)
    say(f"{Path(script).name}: {len(dataset.train_labels)} training and "
        f"{len(dataset.test_labels)} test images from {dataset.source}; "
        f"{', '.join(results['devices'])}; {results['precision']}; output {out}")
    job.on_device = data.to_device(dataset, normalization, runtime.device)
    if runtime.is_main and kept and lines and (out / "examples.png").exists():
        _redraw_examples(job, results)
    rt.barrier(runtime)  # the ranks start training together, once rank 0 has tidied up


def _train_selected(script, argv, args, job, selected, results, results_file):
    out, runtime, say = job.out, job.runtime, job.say
    with _stop_on_signals(say, stop_at_once_on_repeat=not runtime.distributed) as stop:
        for number, chosen in selected:
            for seed in range(args.seed, args.seed + args.seeds):
                status = _run_config(job, number, chosen, seed, results, results_file, stop)
                if status == "interrupted":
                    return _interrupted(stop, number, out, script, argv, say,
                                        runtime.distributed)
                if rt.any_rank(bool(stop.signals), runtime):  # came as the config ended
                    return _interrupted(stop, number, out, script, argv, say,
                                        runtime.distributed, finished=True)
    if runtime.is_main:
        _tidy(job, results, results_file)
    chosen = {(f"config_{number}", seed) for number, _ in selected
              for seed in range(args.seed, args.seed + args.seeds)}
    finished = [entry for entry in results["configs"] if (entry["id"], entry["seed"]) in chosen]
    if runtime.is_main:
        _print(summary(finished))
        _print(f"Results, weights and plots are in {out}/")
    return 0 if all(entry["status"] == "finished" for entry in finished) else 1


def _redraw_examples(job, results):
    """examples.png anew after configs moved in CONFIGS or went aside, so that its title
    names the best finished config by its id now: predicted again from its weights."""
    finished = [entry for entry in results["configs"] if entry["status"] == "finished"
                and (job.out / entry["weights"]).is_file()]
    if not finished:
        (job.out / "examples.png").unlink()  # it showed a config that is no longer here
        return
    best = max(finished, key=lambda entry: entry["final_test_accuracy"])
    model = job.build_model(best["config"])
    model.load_state_dict(torch.load(job.out / best["weights"], map_location="cpu",
                                     weights_only=True))
    on_device = job.on_device
    predictions = train.predict(model.to(job.runtime.device), on_device.test_images,
                                on_device.scale, on_device.shift, job.runtime,
                                best["config"].get("tta", False))
    outputs.plot_examples(on_device, predictions, best, results["script"], job.out)


ESTIMATE_STEPS = (10, 40)  # timed from the 10th step to the 40th, past the slow first ones


def _epochs_to_train(selected, seeds, results):
    """(runs, epochs) this run still has to train: for the up-front estimate."""
    done = {(entry["id"], entry["seed"]) for entry in results["configs"]
            if entry["status"] in ("finished", "diverged")}
    epochs = [chosen["num_epochs"] for number, chosen in selected
              for seed in range(results["seed"], results["seed"] + seeds)
              if (f"config_{number}", seed) not in done]
    return len(epochs), sum(epochs)


def _estimator(job, run_name, batch_size, steps_per_epoch):
    """(on_step, on_epoch_end) hooks for the first config this run trains, that print how
    long an epoch takes here and the whole run will take (at this config's speed per image:
    a guess for configs of other batch sizes). An epoch of at least 40 steps is timed from
    its 10th step to its 40th (past the slow first ones), plus the test pass's estimated
    cost; a shorter one as a whole, test pass included, when it ends."""
    started, steps, marks = time.perf_counter(), 0, []
    long_epochs = steps_per_epoch >= ESTIMATE_STEPS[1]

    def on_step():
        nonlocal steps
        steps += 1
        if not long_epochs or steps not in ESTIMATE_STEPS:
            return
        if job.runtime.device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        if steps == ESTIMATE_STEPS[1]:
            per_image = (marks[1] - marks[0]) / (ESTIMATE_STEPS[1] - ESTIMATE_STEPS[0]) \
                / batch_size
            trained, tested = len(job.on_device.train_labels), len(job.on_device.test_labels)
            scored = tested + len(train.train_sample(trained, tested))  # forward only: ~1/3
            _tell_estimate(job, run_name, per_image * (trained + scored / 3))

    def on_epoch_end():
        if not long_epochs and not marks:
            marks.append(time.perf_counter())
            _tell_estimate(job, run_name, marks[0] - started)

    return on_step, on_epoch_end


def _tell_estimate(job, run_name, epoch):
    where = ("this CPU" if job.runtime.device.type == "cpu" else
             f"this GPU ({torch.cuda.get_device_name(job.runtime.device)})")
    runs, epochs = job.epochs_to_train
    quick = " For a quick look: --subset 5000 --epochs 2." if epochs * epoch > 600 else ""
    job.say(f"{run_name}: about {_duration(epoch)} an epoch on {where}; the {runs} run(s) to "
            f"train need about {_duration(epochs * epoch)} in all.{quick}")


def _duration(seconds):
    """'42 s', '7.5 min', '11.8 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _silent(*args, **kwargs):
    pass


def _check_configs_fit_ranks(selected, runtime):
    for number, chosen in selected:
        if chosen.get("sync_bn") and runtime.distributed and runtime.device.type != "cuda":
            raise UserError(f"config_{number}: sync_bn needs GPUs (PyTorch's SyncBatchNorm "
                            f"runs on CUDA only); remove it to train on CPU processes.")
        if chosen["batch_size"] < runtime.world_size:
            raise UserError(f"config_{number}: batch_size {chosen['batch_size']} is smaller than "
                            f"the {runtime.world_size} processes; batch_size is the global "
                            f"batch, split across them.")


def _load_data(args, script, argv):
    """The data set, decoded; a download failure ends with the command to run instead."""
    try:
        return data.load_cifar10(args.data_dir, args.subset, args.seed)
    except data.DataError as error:
        if args.data_dir is not None:
            raise
        raise data.DataError(f"{error}\nWith a copy in DIR, run:\n  "
                             f"{_command(script, ['--data-dir', 'DIR'] + argv)}") from None


def _checked_configs(configs, model_settings, args):
    checked = config.check_configs(configs, model_settings)
    if args.epochs:
        checked = [dict(chosen, num_epochs=args.epochs) for chosen in checked]
    return checked


def _bytes_needed(model):
    """Room for the weights, a checkpoint (model and momentum) while its next version is
    written beside it, and the small files."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    return 5 * weights + 20 * 2**20  # + the temporary copy of a checkpoint being replaced


def _identity(chosen, seed, run_data, model, precision):
    """What must match for a checkpoint or a finished result to count as this run's."""
    return {"config": chosen, "seed": seed, "data": run_data, "model": model,
            "precision": precision}


def model_fingerprint(model):
    """A short digest of what makes ``model`` this model: its parameter and buffer names and
    shapes, and the code of its own classes (those not from torch), with comments,
    docstrings and layout ignored. Editing the model class in a script changes it."""
    parts = [f"{name}:{tuple(tensor.shape)}" for name, tensor in model.state_dict().items()]
    classes = {type(module) for module in model.modules()
               if not type(module).__module__.startswith("torch.")}
    for cls in sorted(classes, key=lambda cls: cls.__qualname__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):  # no source (defined in a notebook, say)
            continue
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]  # the docstring
        parts.append(ast.unparse(tree))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _run_config(job, number, chosen, seed, results, results_file, stop):
    """Train (or resume, or skip) one config with one seed; record it; return its status."""
    label, out, runtime, say = f"config_{number}", job.out, job.runtime, job.say
    run_name = label if seed == results["seed"] else f"{label} (seed {seed})"
    done = next((entry for entry in results["configs"]
                 if entry["id"] == label and entry["seed"] == seed), None)
    if done and done["status"] in ("finished", "diverged"):  # running, out_of_memory: resumed
        say(f"{run_name}: already {done['status']} in {out} ({outcome(done)}); "
            f"skipped. Use --restart to train it again.")
        return done["status"]
    say(f"{run_name}{' ' + chosen['name'] if 'name' in chosen else ''}: "
        f"{settings(chosen)}")
    train.seed_everything(seed)  # every config starts from the same weights
    model = rt.place_model(job.build_model(chosen), runtime, chosen.get("sync_bn", False))
    if runtime.rank:
        torch.manual_seed(seed + runtime.rank)  # each rank its own dropout masks
    optimizer = train.make_optimizer(model, chosen, runtime)
    steps = len(train.epoch_batches(len(job.on_device.train_labels), chosen["batch_size"],
                                    seed, 1, runtime))
    scheduler = train.make_scheduler(optimizer, chosen, steps)
    scaler = train.make_scaler(runtime)
    step = train.make_step(model, optimizer, chosen, runtime, scheduler, scaler)
    checkpoint_path = ledger.checkpoint_path(out, label, seed)
    checkpoint = rt.from_main(lambda: checkpoints.load_checkpoint(checkpoint_path), runtime)
    progress = train.new_progress()
    if checkpoint:
        progress, note = checkpoints.restore(checkpoint, rt.unwrap(model), optimizer,
                                             scheduler, runtime.rank, scaler)
        say(f"{run_name}: resuming from its checkpoint after epoch {progress['epoch']}, "
            f"step {progress['step']}")
        if note:
            say(f"{run_name}: {note}")
    identity = _identity(chosen, seed, job.run_data, job.models[label], rt.precision(runtime))
    weights_path = out / ledger.weights_name(job.weights_file, number, seed, results["seed"])

    def save(progress):
        rng_states = rt.gather_to_main(checkpoints.rng_state(), runtime)
        if runtime.is_main:
            checkpoints.save_checkpoint(checkpoint_path, identity, step, progress, rng_states)

    def record(status, predictions=None):
        """This run's entry in ``results`` (in full on rank 0), written out there: the JSON
        each time, the PNGs when they are due (see _refresh). A finished entry comes with
        its per-class scores, and examples.png is drawn before the JSON says "finished", so
        a kill between the two leaves nothing that no rerun would redo."""
        entry = {"id": label, "seed": seed, "config": chosen, "status": status}
        if runtime.is_main:
            entry = config_entry(label, seed, chosen, status, progress,
                                         weights_path.name)
            entry.update(model=job.models[label], precision=rt.precision(runtime),
                         compiled=runtime.compile)
            if job.log_every:
                entry["steps_per_epoch"] = steps
            if predictions is not None:
                entry.update(_class_scores(predictions, job.on_device.test_labels))
        results["configs"] = sorted(
            [e for e in results["configs"] if (e["id"], e["seed"]) != (label, seed)] + [entry],
            key=lambda e: (ledger.number_of(e["id"]), e["seed"]))
        if runtime.is_main:
            if predictions is not None and is_best(entry, results["configs"]):
                outputs.plot_examples(job.on_device, predictions, entry, results["script"], out)
            _refresh(job, results, results_file, final=status != "running")
        return entry

    latest = {}  # the last test pass's predictions: those of the final weights once finished

    def epoch_done(predictions):
        latest["predictions"] = predictions
        record("running")

    status = _train(job, run_name, chosen, seed, step, progress, stop, save,
                    on_epoch=epoch_done)
    if status == "interrupted":
        return status
    predictions = None
    if runtime.is_main and status == "finished":
        on_device = job.on_device
        predictions = latest.get("predictions")
        if predictions is None:  # resumed with nothing left to train: no test pass ran
            predictions = train.predict(rt.unwrap(model), on_device.test_images,
                                        on_device.scale, on_device.shift, runtime,
                                        chosen.get("tta", False))
        outputs.save_weights(rt.unwrap(model), weights_path)
    record(status, predictions)  # after the weights: the JSON never names a file not yet there
    if runtime.is_main and status != "out_of_memory":  # kept: a rerun carries on from it
        checkpoints.remove_checkpoint(checkpoint_path)
    return status


# The PNGs are redrawn after an epoch only when at least this many times their last drawing
# time has passed since, so that live plots cost at most about 1/REFRESH_RATIO of the run.
REFRESH_RATIO = 20


def _refresh(job, results, results_file, final):
    """Write the results JSON (every epoch: a few milliseconds) and redraw the PNGs (a few
    tenths of a second: at the end of each config, and between epochs when due)."""
    save_json(results, job.out / results_file)
    if final or time.monotonic() - job.drawn_at >= REFRESH_RATIO * job.drawing:
        started = time.monotonic()
        outputs.plot_run(results["configs"], job.out, results["script"], job.log_every,
                         run=results)
        job.drawn_at, job.drawing = time.monotonic(), time.monotonic() - started


def _class_scores(predictions, test_labels):
    """Per-class test accuracy (percent) and the confusion matrix [true][predicted]."""
    matrix = train.confusion_matrix(predictions, test_labels)
    per_class = (100.0 * matrix.diag() / matrix.sum(dim=1).clamp(min=1)).tolist()
    return {"per_class_accuracy": dict(zip(data.CLASSES, per_class)),
            "confusion_matrix": matrix.tolist()}


def _train(job, label, chosen, seed, step, progress, stop, save, on_epoch):
    """train.train_config with the run's messages; ``on_epoch(predictions)`` after each
    epoch's line, with that epoch's predictions on the test set."""
    def on_log(epoch, step, loss):
        job.say(f"epoch {epoch}: batch {step} loss: {loss:.3f}")

    def on_evaluate(epoch):
        stop.doing = f"the test pass of epoch {epoch} (the epoch itself is saved)"

    def epoch_done(record, predictions):  # rank 0 only: the test accuracy is measured there
        stop.doing = "the current step"
        job.say(f"{label} epoch {record['epoch']}/{chosen['num_epochs']}: "
                   f"loss {record['train_loss']:.4f}, train acc {record['train_accuracy']:.2f}%, "
                   f"test acc {record['test_accuracy']:.2f}%, {record['seconds']:.1f} s")
        on_epoch(predictions)
        if on_epoch_end is not None:
            on_epoch_end()

    say, main = job.say, job.runtime.is_main
    on_step = on_epoch_end = None
    if job.estimate_due:
        steps = len(train.epoch_batches(len(job.on_device.train_labels), chosen["batch_size"],
                                        seed, 1, job.runtime))
        on_step, on_epoch_end = _estimator(job, label, chosen["batch_size"], steps)
    job.estimate_due = False
    hooks = train.Hooks(stop_requested=lambda: bool(stop.signals),
                        log_every=job.log_every, on_log=on_log,
                        on_evaluate=on_evaluate if main else None,
                        on_epoch=epoch_done if main else None, on_step=on_step)
    status = train.train_config(step, chosen, job.on_device, seed, progress, save,
                                hooks=hooks)
    if status == "out_of_memory":
        say(f"error: {label} ran out of GPU memory at batch_size {chosen['batch_size']}. "
            f"Try a smaller batch_size in CONFIGS; the other configs carry on, and its "
            f"checkpoint is kept.", file=sys.stderr)
    if status == "diverged":
        where = progress["diverged_at"]
        say(f"{label}: the loss became NaN or infinite at epoch {where['epoch']}, step "
            f"{where['step']}; this config is stopped and marked diverged. A smaller lr "
            f"usually helps.", file=sys.stderr)
    return status


@dataclass
class Run:
    """What every config of one run shares: where it trains, what it writes, how it speaks."""
    runtime: rt.Runtime
    out: Path
    build_model: Callable      # config -> a fresh model (the script's)
    models: dict               # config id -> model_fingerprint of its model
    weights_file: str          # the script's weights name pattern
    log_every: int             # the baseline's running-loss lines, every N steps; 0: none
    run_data: dict             # the results JSON's "data" record
    say: Callable              # print on rank 0, nothing elsewhere
    on_device: data.OnDevice = None  # set once the data is on the device
    epochs_to_train: tuple = (0, 0)  # (runs, epochs) left, for the estimate
    estimate_due: bool = True  # the first config trained prints the time estimate
    drawn_at: float = 0.0      # when the PNGs were last drawn (time.monotonic)...
    drawing: float = 0.0       # ...and how long that took


@dataclass
class StopRequest:
    """The signals received so far, and what a first one waits for before the run stops."""
    signals: list = field(default_factory=list)
    doing: str = "the current step"


class Terminated(KeyboardInterrupt):
    """SIGTERM before training started: handled as Ctrl-C is, with the signal's name."""
    signum = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the data loads and the folder is prepared, SIGTERM stops the run as Ctrl-C does
    (one line, the download's partial files removed) instead of killing it without a word."""
    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stop_on_signals(say, stop_at_once_on_repeat=True):
    """SIGINT / SIGTERM ask training to stop after the current step (or test pass); a second
    one stops now, except under torchrun, which sends its workers SIGTERM twice (and SIGKILL
    later)."""
    stop = StopRequest()

    def handler(signum, frame):
        if stop.signals:
            if stop_at_once_on_repeat:
                raise KeyboardInterrupt
            return
        stop.signals.append(signum)
        again = " (send it again to stop at once)" if stop_at_once_on_repeat else ""
        say(f"\n{signal.Signals(signum).name}: waiting for {stop.doing} to end, then saving "
            f"a checkpoint and stopping{again}.", file=sys.stderr, flush=True)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNAL_EXIT}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interrupted(stop, number, out, script, argv, say, distributed, finished=False):
    name = signal.Signals(stop.signals[0]).name
    where = (f"after config_{number} ended; the next configs have not started" if finished
             else f"during config_{number}; its checkpoint is in {out / 'checkpoints'}/")
    say(f"Stopped by {name} {where}. {_resume_hint(script, argv, distributed)}",
        file=sys.stderr)
    return SIGNAL_EXIT[stop.signals[0]]


def _tidy(job, results, results_file):
    """What a run stopped at the wrong moment (kill -9 between writing a config's results
    and its PNGs, or removing its checkpoint) left undone: done at the end of every run."""
    for entry in results["configs"]:
        if entry["status"] in ("finished", "diverged"):
            checkpoints.remove_checkpoint(ledger.checkpoint_path(job.out, entry["id"],
                                                                 entry["seed"]))
    if not all((job.out / name).is_file() for name in PLOT_FILES[:3]):
        outputs.plot_run(results["configs"], job.out, results["script"], job.log_every,
                         run=results)
