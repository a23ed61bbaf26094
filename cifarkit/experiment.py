"""The one call a script's main() makes: flags -> checks -> data -> train each config -> files.

Every (config, seed) trains in a run folder of its own in OUT/runs/ (cifarkit/store.py); the
results JSON, config_N.pth and the PNGs in OUT are views of the runs CONFIGS selects.

Exit status: 0 every selected config finished; 1 a config diverged, ran out of memory or a
file could not be written; 2 bad input (nothing trained, nothing written); 130 / 143
stopped by SIGINT / SIGTERM after saving a checkpoint.
"""
import ast
import contextlib
import functools
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

from . import checkpoints, cli, config, data, outputs, plots, signals, store, train
from . import runtime as rt
from .errors import RankError, UserError
from .results import PLOT_FILES, config_entry, load_results, outcome, settings, summary

EXIT_WRITE_FAILED = 1  # the same status as a failed config, as the README says


@dataclass(frozen=True)
class Script:
    """What a report script hands the engine: everything but the flags, which run() reads."""
    file: str                  # the script's __file__: its name, and the command to resume it
    description: str           # its docstring, shown by --help
    build_model: Callable      # config -> a fresh model (the script's own class)
    configs: list              # its CONFIGS
    out_dir: str               # the folder --out defaults to
    results_file: str          # the results JSON's name in that folder
    normalization: tuple       # (mean, std) per channel of the inputs
    default_device: str = "auto"  # --device when the command gives none
    model_settings: dict = None   # the config keys build_model reads (see config.model_rules)
    # nn.DataParallel when several GPUs are visible (under torchrun every script uses
    # DistributedDataParallel instead)
    data_parallel: bool = False
    weights_file: str = "config_{number}.pth"  # the weights' names ("model.pth": the baseline)
    log_every: int = 0         # > 0: the running loss every that many mini-batches
    # --amp auto uses bf16 on CPUs that have it in hardware (for models measured faster so)
    cpu_amp: bool = False


@dataclass
class Job:
    """What every config of one run shares: where it trains, what it writes, how it speaks."""
    runtime: rt.Runtime
    out: Path
    script: Script             # what the script handed in: its model, names, log_every...
    argv: list                 # the flags it ran with (for the command that resumes it)
    configs: dict              # config id -> the checked config, for every config of CONFIGS
    models: dict               # config id -> model_identity of its model
    neutral: dict              # key -> the value that trains as if the key were absent
    header: dict               # the results JSON's run-level fields (outputs.new_results)
    restart: bool              # --restart: each selected (config, seed) trains a new run
    say: Callable              # print on rank 0, nothing elsewhere
    results: dict = None       # the results JSON as last written (rank 0)
    on_device: data.OnDevice = None  # set once the data is on the device
    epochs_to_train: tuple = (0, 0)  # (runs, epochs) left, for the estimate
    estimate_due: bool = True  # the first config trained prints the time estimate
    drawn_at: float = 0.0      # when the PNGs were last drawn (time.monotonic)...
    drawing: float = 0.0       # ...and how long that took
    locks: dict = field(default_factory=dict)  # run folder -> its lock, while it trains
    said: set = field(default_factory=set)     # the view lines said already

    def identity(self, label, seed):
        """What a run must match to be ``label`` trained with ``seed`` here and now."""
        return store.identity(self.header["script"], self.configs[label], self.neutral, seed,
                              self.header["data"], self.header["precision"],
                              self.models[label])


@dataclass
class Training:
    """One config trained with one seed in its run folder: what it is, its Step, how far it
    has got."""
    label: str                 # its config id, "config_N"
    name: str                  # as messages name it: the label, with " (seed S)" for extra seeds
    seed: int
    config: dict               # the checked config (with --epochs applied)
    step: train.Step           # model, optimizer, scheduler, scaler... (train.make_step)
    progress: dict             # train.new_progress(), or its checkpoint's
    steps_per_epoch: int       # its optimizer steps an epoch (the time estimate, the loss plot)
    run_dir: Path              # its folder in the store
    record: dict               # its run record (rank 0)
    predictions: object = None  # the last test pass's: the final weights' once finished


def run(script, argv=None):
    """Run a report script (``script``: a Script) with the flags ``argv`` (sys.argv[1:] when
    None); returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _plain_console()
    args = cli.parse_args(Path(script.file).name, script.description, script.out_dir,
                          script.default_device, argv, script.cpu_amp)
    with contextlib.ExitStack() as cleanup:  # on leaving: close the runtime, free the runs
        with signals.sigterm_as_interrupt():  # until training installs its own handlers
            try:
                job, selected = _prepare(script, args, argv, cleanup)
            except (UserError, KeyboardInterrupt, OSError) as error:
                return _stopped_before_training(error, Path(args.out))
        return _train_job(job, selected, args)


def _train_job(job, selected, args):
    """Train the selected configs; returns the exit status, saying why when it is not 0."""
    try:
        status = _train_selected(job, selected, args)
    except (UserError, KeyboardInterrupt, OSError) as error:
        return _stopped_while_training(error, job)
    except RuntimeError as error:  # dist.DistError is one; gloo raises plain ones
        if not (job.runtime.distributed and rt.peer_lost(error)):
            raise
        return _lost_contact(error, job)
    # Every rank leaves together: a rank that tore its process group down while rank 0
    # was still writing files was once seen to abort ("terminate called without an
    # active exception", gloo, CI), and a rank leaving with status 1 (a config failed)
    # makes torchrun stop the others, rank 0 perhaps before it has written the results.
    rt.barrier(job.runtime)
    return status


def _prepare(script, args, argv, cleanup):
    """Everything before training: the checks, the data, the runtime, the output folder
    (checked, taken into the store if an older kit wrote it, its views rebuilt). Returns
    (the Job, the selected [(number, config)])."""
    all_configs = _checked_configs(script.configs, script.model_settings, args)
    selected = cli.select_configs(all_configs, args.configs)
    cli.check_subset(args.subset, selected)
    rt.check_device_request(args.device)
    # Every rank loads (downloads) before the ranks wait on each other: a slow first
    # download must not run into the process group's timeout.
    dataset = _load_data(args, script.file, argv)
    runtime = rt.init_runtime(args.device, script.data_parallel, args.amp, args.compile,
                              script.cpu_amp)
    cleanup.callback(rt.close, runtime)
    rt.check_configs_fit(selected, runtime)
    models = {f"config_{number}": model_identity(script.build_model, chosen, number)
              for number, chosen in enumerate(all_configs, start=1)}
    bytes_needed = _bytes_needed(script.build_model(selected[0][1]))
    rt.from_main(lambda: outputs.check_out_dir(
        args.out, bytes_needed, args.data_dir or data.DEFAULT_ROOT,
        _kit_names(script, selected, args)), runtime)
    header = outputs.new_results(script, dataset, runtime, args.seed, argv)
    job = Job(runtime=runtime, out=Path(args.out), script=script, argv=argv,
              configs={f"config_{number}": chosen
                       for number, chosen in enumerate(all_configs, start=1)},
              models=models, neutral=config.neutral_values(script.model_settings),
              header=header, restart=args.restart,
              say=_print if runtime.is_main else _silent)
    cleanup.callback(_release_runs, job)
    for line in rt.from_main(lambda: _open_store(job, selected, args.seeds), runtime):
        job.say(line)
    job.say(f"{Path(script.file).name}: {len(dataset.train_labels)} training and "
            f"{len(dataset.test_labels)} test images from {dataset.source}; "
            f"{', '.join(header['devices'])}; {header['precision']}; output {job.out}")
    job.on_device = data.to_device(dataset, script.normalization, runtime.device)
    rt.barrier(runtime)  # the ranks start training together, once rank 0 has tidied up
    return job, selected


def _stopped_before_training(error, out):
    """Say why the run stopped before anything trained (bad input, a signal, a file that
    could not be written); return the exit status."""
    if isinstance(error, UserError):
        if rt.is_main_process() or isinstance(error, RankError):
            _print(f"error: {error}", file=sys.stderr)
        elif rt.launched_by_torchrun():
            # Every rank meets the same refusal, and torchrun stops the others as soon
            # as one has left: rank 0 was seen stopped before it had printed why.
            time.sleep(3)
        return 2
    if isinstance(error, KeyboardInterrupt):
        signum = getattr(error, "signum", signal.SIGINT)
        if rt.is_main_process():
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            _print(f"\nStopped by {name} before training started; nothing was trained.",
                   file=sys.stderr)
        return signals.EXIT[signum]
    return _write_failed(out, error)  # the PNGs redrawn after a move, on a full disk say


def _stopped_while_training(error, job):
    """Say why training stopped short (a damaged checkpoint, a second Ctrl-C, a file that
    could not be written); return the exit status. What was saved before stays."""
    if isinstance(error, UserError):  # found only once training began: a damaged checkpoint
        if job.runtime.is_main:
            _print(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C: stop at once
        say = print if job.runtime.is_main else _silent
        say(f"\nStopped at once. What was saved stays: finished configs in "
            f"{job.out / store.RUNS}/, the unfinished one's checkpoint (from its last "
            f"epoch's end) in its run folder there.\n"
            f"{_resume_hint(job.script.file, job.argv, job.runtime.distributed)}",
            file=sys.stderr)
        return signals.EXIT[signal.SIGINT]
    # disk full, folder removed: no barrier, the other ranks cannot know of it
    return _write_failed(job.out, error)


def _lost_contact(error, job):
    """Say that another rank went away mid-training; return the exit status."""
    _print(f"error: rank {job.runtime.rank} lost contact with the other ranks "
           f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Another "
           f"worker has probably died. Checkpoints are saved at every epoch's end in "
           f"each run's folder in {job.out / store.RUNS}/. "
           f"{_resume_hint(job.script.file, job.argv, True)} "
           f"(torchrun --max-restarts=3 restarts the workers by itself).", file=sys.stderr)
    return EXIT_WRITE_FAILED


def _write_failed(out, error):
    link, elsewhere = Path(out) / store.RUNS, ""
    try:  # a scratch disk behind runs/ may be the full one, not the folder's own
        if link.is_symlink() and link.stat().st_dev != Path(out).stat().st_dev:
            elsewhere = f" (or to {link.resolve()}, another disk, which runs/ links to)"
    except OSError:
        pass
    _print(f"error: cannot write to {out}{elsewhere}: {error}. Results saved so far are kept; "
           f"once that is fixed, rerun the same command to carry on.", file=sys.stderr)
    return EXIT_WRITE_FAILED


def _built(build_model, chosen, number):
    """``build_model(chosen)``, refused by name when it is not a model."""
    model = build_model(chosen)
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"config_{number}: build_model(config) must return a torch.nn.Module; "
                        f"it returned {type(model).__name__}.")
    return model


def _command(script, argv):
    """The command that ran this script, as one can paste it (paths with spaces quoted)."""
    path, typed = Path(script).absolute(), sys.argv[0]
    if typed and Path(typed).absolute() == path:
        shown = typed  # as the user typed it
    else:
        shown = min(str(path), os.path.relpath(path), key=len)
    return shlex.join(["python", shown, *argv])


def _resume_hint(script, argv, distributed):
    """How to carry on, with the command on a line of its own so it can be copied (without
    --restart, which would start over once more)."""
    kept = [arg for arg in argv if arg != "--restart"]
    if distributed:
        return "To resume, run the same torchrun command again" + (
            " without --restart" if kept != argv else "")
    return (f"To resume, run {'the same command' if kept == argv else 'this'}:\n  "
            + _command(script, kept))


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


def _kit_names(script, selected, args):
    """The files this run may write in its folder, relative to it (to find what is in the
    way before anything trains)."""
    written = [script.results_file, *PLOT_FILES]
    for number, _ in selected:
        for seed in range(args.seed, args.seed + args.seeds):
            written.append(store.weights_name(script.weights_file, number, seed, args.seed))
    return written


def _open_store(job, selected, seeds):
    """Rank 0: take in what an older kit left in the folder, rebuild the views from the runs
    CONFIGS selects now, and say what changed since the folder's last views. Returns the
    lines to say."""
    out, script = job.out, job.script
    with store.store_lock(out):
        lines = store.migrate(out, script.results_file) \
            if store.legacy_folder(out, script.results_file) else []
        store.remove_temporaries(out)
        for run_dir, record in store.runs(out).items():
            store.tidy(run_dir, record)
        before = load_results(out / script.results_file)
        lines += _refresh(job, final=True, locked=True, drawn=_drawn(out, before, script))
    lines += _changes(job, before if isinstance(before, dict) else None,
                      {f"config_{number}" for number, _ in selected})
    done = {(entry["id"], entry["seed"]) for entry in job.results["configs"]
            if entry["status"] in store.ENDED}
    epochs = [chosen["num_epochs"] for number, chosen in selected
              for seed in range(job.header["seed"], job.header["seed"] + seeds)
              if job.restart or (f"config_{number}", seed) not in done]
    job.epochs_to_train = (len(epochs), sum(epochs))
    return lines


def _changes(job, before, selected):
    """What the views show differently from the folder's last ones: configs edited (their
    earlier runs stay in the store), moved in CONFIGS, back to an earlier run, renamed, or
    removed."""
    if before is None:
        return []
    lines, now = [], {(entry["id"], entry["seed"]): entry for entry in job.results["configs"]}
    where = {entry["run"]: label for (label, _), entry in now.items()}
    for entry in before["configs"]:
        label, seed, run = entry.get("id"), entry.get("seed"), entry.get("run")
        if seed != job.header["seed"] or not isinstance(run, str):
            continue
        shown = now.get((label, seed))
        if shown and shown["run"] == run:
            was, new = ({key: config[key] for key in store.NAMING_KEYS if key in config}
                        for config in (entry["config"], shown["config"]))
            if was != new:
                lines.append(f"{label}: {store.describe_change(was, new)} (a label: its "
                             f"results are kept)")
        elif run in where:
            lines.append(f"{label} is {where[run]} now (the same config, moved in CONFIGS): "
                         f"its results are kept")
        elif label in job.configs and job.configs[label].get("name") == \
                entry["config"].get("name"):
            record = store.read_record(job.out / run)
            change = "its run's record cannot be read (run.json edited or deleted?)" \
                if record is None else \
                store.what_differs(record, job.identity(label, seed), job.neutral)
            if change == "nothing":  # another run of the very same: a copy of the folder
                continue
            lines.append(f"{label} differs from its earlier results: {change}; "
                         + (f"it shows its earlier run {job.out / shown['run']} again, nothing "
                            f"to train" if shown else "it trains anew" if label in selected
                            else "it trains once selected (it is not in --configs)")
                         + f" (the run it replaces stays in {job.out / run}/)")
        else:
            name = entry["config"].get("name")
            lines.append(f"{label} differs from its earlier results: it is no longer in CONFIGS"
                         f"{f' (it was {name!r})' if name else ''}; its run stays in "
                         f"{job.out / run}/")
    return lines


def _latest(matching, label):
    """The run to show or carry on among ``matching`` [(folder, record)]: the latest one
    trained as ``label`` if any (two identical configs keep their own runs), else the
    latest."""
    return max(matching, key=lambda item: (item[1].get("label") == label, item[1]["created"]))


def _shown(job, every):
    """[(label, config, run folder, record)]: for each config of CONFIGS and each seed, the
    run of ``every`` ({folder: record}, store.runs) that shows it (_latest)."""
    shown = []
    for label, chosen in job.configs.items():
        by_seed = {}
        for run_dir, record in every.items():
            seed = record.get("seed")
            if isinstance(seed, int) and store.matches(record, job.identity(label, seed),
                                                       job.neutral):
                by_seed.setdefault(seed, []).append((run_dir, record))
        for seed in sorted(by_seed):
            run_dir, record = _latest(by_seed[seed], label)
            store.tidy(run_dir, record)
            shown.append((label, chosen, run_dir, record))
    return shown


def _claim(job, label, chosen, seed, name):
    """Rank 0: the run that (``label``, ``seed``) trains in, as (its folder, its record,
    whether it is done already). An unfinished run is resumed; one another process trains
    is waited for; --restart, or no matching run, makes a new one. The run's lock is held
    (job.locks) until it ends."""
    wanted = job.identity(label, seed)
    while True:
        busy = None
        with store.store_lock(job.out):
            matching = [(run_dir, record) for run_dir, record in store.runs(job.out).items()
                        if store.matches(record, wanted, job.neutral)]
            if matching and not job.restart:
                run_dir, record = _latest(matching, label)
                store.tidy(run_dir, record)
                if store.usable(run_dir, record):
                    return run_dir, record, True
                if record["status"] == "finished":
                    job.say(f"{name}: its weights {run_dir / store.WEIGHTS} are missing or "
                            f"not those it finished with (deleted or overwritten by hand?), "
                            f"so it trains again in a new run")
                else:
                    lock = store.lock(run_dir, blocking=False)
                    if lock is not None:
                        job.locks[run_dir] = lock
                        return run_dir, store.read_record(run_dir) or record, False
                    busy = run_dir
            if busy is None:
                run_dir = store.new_run(job.out, label, chosen, seed, job.header, wanted)
                job.locks[run_dir] = store.lock(run_dir, blocking=False)
                return run_dir, store.read_record(run_dir), False
        job.say(f"{name}: another process is training it right now (in {busy}); waiting "
                f"for it to finish.")
        os.close(store.lock(busy, blocking=True))


def _release_runs(job):
    for lock in job.locks.values():
        os.close(lock)
    job.locks.clear()


def _train_selected(job, selected, args):
    """Train each selected config with each seed of --seed/--seeds, in turn; say how they
    ended; return the exit status."""
    runtime, seeds = job.runtime, range(args.seed, args.seed + args.seeds)
    statuses = []
    with signals.stop_on_signals(job.say, stop_at_once_on_repeat=not runtime.distributed) as stop:
        for number, chosen in selected:
            for seed in seeds:
                statuses.append(_run_config(job, number, chosen, seed, stop))
                if statuses[-1] == "interrupted":
                    return _interrupted(job, stop, number)
                if rt.any_rank(bool(stop.signals), runtime):  # came as the config ended
                    return _interrupted(job, stop, number, finished=True)
    if runtime.is_main:
        results = load_results(job.out / job.script.results_file)
        _refresh(job, final=True, drawn=_drawn(job.out, results, job.script))
        chosen = {(f"config_{number}", seed) for number, _ in selected for seed in seeds}
        _print(summary([entry for entry in job.results["configs"]
                        if (entry["id"], entry["seed"]) in chosen]))
        _print(f"Results, weights and plots are in {job.out}/ (every run in "
               f"{job.out / store.RUNS}/)")
    return 0 if all(status == "finished" for status in statuses) else 1


# An epoch is timed from its 10th step (past the slow first ones) to its 40th, or later, until
# 2 s have passed: a window of a few steps, on a busy machine, once gave 99 s for 42 s.
ESTIMATE_STEPS, ESTIMATE_SECONDS = (10, 40), 2.0


def _estimator(job, run_name, batch_size):
    """(on_step, on_epoch_end) hooks for the first config this run trains, that print how
    long an epoch takes here and the whole run will take (at this config's speed per image:
    a guess for configs of other batch sizes). An epoch is timed over ESTIMATE_STEPS and
    ESTIMATE_SECONDS, plus the test pass's estimated cost; one that ends sooner, from its
    10th step to its end, test pass included (as a whole when shorter than 10 steps)."""
    started, steps, marks = time.perf_counter(), 0, []

    def on_step():
        nonlocal steps
        steps += 1
        if steps < ESTIMATE_STEPS[0] or len(marks) == 2 or steps % ESTIMATE_STEPS[0]:
            return
        if job.runtime.device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        if len(marks) == 2 and (steps < ESTIMATE_STEPS[1]
                                or marks[1] - marks[0] < ESTIMATE_SECONDS):
            marks.pop()  # not yet
        elif len(marks) == 2:
            per_image = (marks[1] - marks[0]) / (steps - ESTIMATE_STEPS[0]) / batch_size
            trained, tested = len(job.on_device.train_labels), len(job.on_device.test_labels)
            scored = tested + len(train.train_sample(trained, tested))  # forward only: ~1/3
            _tell_estimate(job, run_name, per_image * (trained + scored / 3))

    def on_epoch_end():
        if len(marks) < 2:
            begun, skipped = ((marks[0], ESTIMATE_STEPS[0]) if marks and steps > ESTIMATE_STEPS[0]
                              else (started, 0))
            marks[:] = [begun, time.perf_counter()]
            _tell_estimate(job, run_name,
                           (marks[1] - begun) * max(steps, 1) / max(steps - skipped, 1))

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


def _load_data(args, script_file, argv):
    """The data set, decoded; a download failure ends with the command to run instead."""
    try:
        return data.load_cifar10(args.data_dir, args.subset, args.seed)
    except data.DataError as error:
        if args.data_dir is not None:
            raise
        raise data.DataError(f"{error}\nWith a copy in DIR, run:\n  "
                             f"{_command(script_file, ['--data-dir', 'DIR'] + argv)}") from None


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


def model_identity(build_model, chosen, number):
    """What the freshly built model of ``chosen`` computes, to know a run of it again: its
    parameter and buffer names and shapes, the sum and sum of squares of each initial
    tensor, and its outputs on a fixed probe batch (in eval mode, and in train mode with
    fixed dropout masks). An edit to the class, to build_model, to the initialisation or to a
    module-level value the forward reads changes it; a comment does not. Also checks that
    the model gives 10 scores an image, before anything trains."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _built(build_model, chosen, number)
        state = model.state_dict()
        probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                outputs_ = [model.eval()(probe)]
                torch.manual_seed(1)
                outputs_.append(model.train()(probe))
        except Exception as error:  # noqa: BLE001 (the student's model: any error is theirs)
            raise UserError(f"config_{number}: the model fails on a batch of two 3x32x32 "
                            f"images ({type(error).__name__}: {str(error).splitlines()[0]})"
                            ) from None
    if any(tuple(output.shape) != (2, 10) for output in outputs_):
        raise UserError(f"config_{number}: the model must give 10 scores per image (one per "
                        f"CIFAR-10 class); for a batch of 2 images it gives a tensor of shape "
                        f"{tuple(outputs_[0].shape)}. Check the last layer (e.g. "
                        f"nn.Linear(84, 10)).")
    shapes = "\n".join(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}"
                       for name, tensor in state.items())
    init = [value for tensor in state.values() if tensor.is_floating_point()
            for value in (float(tensor.double().sum()), float(tensor.double().square().sum()))]
    return {"shapes": hashlib.sha256(shapes.encode()).hexdigest()[:16], "init": init,
            "probe": torch.cat(outputs_).flatten().double().tolist(),
            "legacy": legacy_fingerprint(model)}


def legacy_fingerprint(model):
    """The model fingerprint of the kit before the store (the source of the model's own
    classes, names and shapes): runs taken in from then are known again by it."""
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


def _run_config(job, number, chosen, seed, stop):
    """Train (or resume, or skip) one config with one seed in its run; return its status."""
    label = f"config_{number}"
    name = label if seed == job.header["seed"] else f"{label} (seed {seed})"
    run_dir, record, done = rt.from_main(lambda: _claim(job, label, chosen, seed, name),
                                         job.runtime)
    if done:
        job.say(f"{name}: already {record['status']} in {run_dir} ({outcome(record)}); "
                f"skipped. Use --restart to train it again.")
        return record["status"]
    job.say(f"{name}{' ' + chosen['name'] if 'name' in chosen else ''}: "
            f"{settings(chosen)}")
    training = _start(job, number, chosen, seed, name, Path(run_dir), record)

    def epoch_done(predictions):
        training.predictions = predictions
        _record(job, training, "running")

    status = _train(job, training, stop, on_epoch=epoch_done)
    if status != "interrupted":
        _finish(job, training, status)
    return status


def _start(job, number, chosen, seed, name, run_dir, record):
    """A new Training of ``chosen`` with ``seed``, carried on from its checkpoint if any."""
    runtime, label = job.runtime, f"config_{number}"
    train.seed_everything(seed)  # every config starts from the same weights
    model = rt.place_model(job.script.build_model(chosen), runtime,
                           chosen.get("sync_bn", False))
    if runtime.rank:
        torch.manual_seed(seed + runtime.rank)  # each rank its own dropout masks
    optimizer = train.make_optimizer(model, chosen, runtime)
    steps = len(train.epoch_batches(len(job.on_device.train_labels), chosen["batch_size"],
                                    seed, 1, runtime))
    scheduler = train.make_scheduler(optimizer, chosen, steps)
    scaler = train.make_scaler(runtime)
    training = Training(
        label=label, name=name, seed=seed, config=chosen,
        step=train.make_step(model, optimizer, chosen, runtime, scheduler, scaler),
        progress=train.new_progress(), steps_per_epoch=steps, run_dir=run_dir, record=record)
    _restore(job, training)
    return training


def _restore(job, training):
    """Carry ``training`` on from its run's checkpoint, where one was saved."""
    step, name = training.step, training.name
    path = training.run_dir / store.CHECKPOINT
    checkpoint = rt.from_main(lambda: checkpoints.load_checkpoint(path), job.runtime)
    if not checkpoint:
        return
    training.progress, note = checkpoints.restore(checkpoint, rt.unwrap(step.model),
                                                  step.optimizer, step.scheduler,
                                                  job.runtime.rank, step.scaler)
    job.say(f"{name}: resuming from its checkpoint after epoch "
            f"{training.progress['epoch']}, step {training.progress['step']}")
    if note:
        job.say(f"{name}: {note}")


def _save_checkpoint(job, training, progress):
    """Every rank's random-number state, and on rank 0 the checkpoint of ``progress``."""
    rng_states = rt.gather(checkpoints.rng_state(), job.runtime)
    if job.runtime.is_main:
        checkpoints.save_checkpoint(training.run_dir / store.CHECKPOINT,
                                    training.record["identity"], training.step, progress,
                                    rng_states)


def _record(job, training, status, predictions=None):
    """Rank 0: write the run's record as it stands (its history so far, how it ended; a
    finished one with its per-class scores), then rebuild the views."""
    if not job.runtime.is_main:
        return
    chosen = training.config
    entry = config_entry(training.label, training.seed, chosen, status, training.progress,
                         store.WEIGHTS)
    entry.pop("id")
    record = dict(training.record, **entry, precision=rt.precision(job.runtime),
                  compiled=job.runtime.compile)
    if job.script.log_every:
        record["steps_per_epoch"] = training.steps_per_epoch
    if predictions is not None:
        record.update(_class_scores(predictions, job.on_device.test_labels))
        record["weights_sha256"] = store.sha256(training.run_dir / store.WEIGHTS)
    if status in store.ENDED:
        record["ended"] = time.time()
    store.write_record(training.run_dir, record)
    training.record = record
    last_epoch = training.progress["epoch"] >= chosen["num_epochs"]
    for line in _refresh(job, final=status != "running",
                         drawn_next=status == "running" and last_epoch):
        if line not in job.said:  # once, not every epoch
            job.said.add(line)
            job.say(line)


def _finish(job, training, status):
    """Save a finished training's weights and predictions, record how it ended (the run's
    last write), drop its checkpoint (kept after out-of-memory: a rerun carries on)."""
    runtime, model = job.runtime, rt.unwrap(training.step.model)
    predictions = None
    if runtime.is_main and status == "finished":
        predictions = training.predictions
        on_device = job.on_device
        if predictions is None:  # resumed with nothing left to train: no test pass ran
            predictions = train.predict(model, on_device.test_images, on_device.scale,
                                        on_device.shift, runtime,
                                        training.config.get("tta", False))
        outputs.save_weights(model, training.run_dir / store.WEIGHTS)
        labels = on_device.test_labels.cpu()
        pick = torch.linspace(0, len(labels) - 1, min(32, len(labels))).long()
        store.save_predictions(training.run_dir, predictions.cpu().numpy(), labels.numpy(),
                               pick.numpy(), on_device.test_images[pick].cpu().numpy())
    # After the weights: a record never says "finished" before they are there.
    _record(job, training, status, predictions)
    if runtime.is_main:
        if status in store.ENDED:
            (training.run_dir / store.CHECKPOINT).unlink(missing_ok=True)
        lock = job.locks.pop(training.run_dir, None)
        if lock is not None:
            os.close(lock)


# The PNGs are redrawn after an epoch only when at least this many times their last drawing
# time has passed since, so that live plots cost at most about 1/REFRESH_RATIO of the run.
REFRESH_RATIO = 20


def _drawn(out, results, script):
    """What the PNGs in ``out`` show, when they were drawn after its results JSON was last
    written (so a kill cut no drawing short): its configs and what they ran on; else None."""
    try:
        written = (out / script.results_file).stat().st_mtime
        if isinstance(results, dict) and all((out / name).stat().st_mtime >= written
                                             for name in PLOT_FILES[:3]):
            return [results[key] for key in ("configs", "devices", "data")]
    except OSError:
        pass
    return None


def _refresh(job, final, drawn_next=False, locked=False, drawn=None):
    """Rank 0: rebuild the views from the store: the results JSON and the weights every time
    (milliseconds), the PNGs (a few tenths of a second) at the end of each config and
    between epochs when due, unless ``drawn_next`` (the config's end follows at once) or they
    show already what they would (``drawn``: _drawn's). Returns the lines that say what
    could not be a view."""
    def draw(results):
        due = not drawn_next and time.monotonic() - job.drawn_at >= REFRESH_RATIO * job.drawing
        kept = []
        if (final or due) and drawn != [results[key] for key in ("configs", "devices", "data")]:
            started = time.monotonic()
            kept = plots.draw_views(job.out, results, store.examples(job.out, results))
            job.drawn_at, job.drawing = time.monotonic(), time.monotonic() - started
        job.results = results
        return kept

    with contextlib.nullcontext() if locked else store.store_lock(job.out):
        every = store.runs(job.out)
        return store.write_views(job.out, job.script.results_file, job.script.weights_file,
                                 job.header, _shown(job, every), draw, every)


def _class_scores(predictions, test_labels):
    """Per-class test accuracy (percent) and the confusion matrix [true][predicted]."""
    matrix = train.confusion_matrix(predictions, test_labels)
    per_class = (100.0 * matrix.diag() / matrix.sum(dim=1).clamp(min=1)).tolist()
    return {"per_class_accuracy": dict(zip(data.CLASSES, per_class)),
            "confusion_matrix": matrix.tolist()}


def _train(job, training, stop, on_epoch):
    """train.train_config with the run's messages; ``on_epoch(predictions)`` after each
    epoch's line, with that epoch's predictions on the test set."""
    chosen, main = training.config, job.runtime.is_main

    def on_log(epoch, step, loss):
        job.say(f"epoch {epoch}: batch {step} loss: {loss:.3f}")

    def on_evaluate(epoch):
        stop.doing = f"the test pass of epoch {epoch} (the epoch itself is saved)"

    def epoch_done(record, predictions):  # rank 0 only: the test accuracy is measured there
        stop.doing = "the current step"
        job.say(f"{training.name} epoch {record['epoch']}/{chosen['num_epochs']}: "
                f"loss {record['train_loss']:.4f}, train acc {record['train_accuracy']:.2f}%, "
                f"test acc {record['test_accuracy']:.2f}%, {record['seconds']:.1f} s")
        if on_epoch_end is not None:  # before the drawing, which most epochs skip
            on_epoch_end()
        on_epoch(predictions)

    on_step = on_epoch_end = None
    if job.estimate_due:
        on_step, on_epoch_end = _estimator(job, training.name, chosen["batch_size"])
    job.estimate_due = False
    hooks = train.Hooks(stop_requested=lambda: bool(stop.signals),
                        log_every=job.script.log_every, on_log=on_log,
                        on_evaluate=on_evaluate if main else None,
                        on_epoch=epoch_done if main else None, on_step=on_step)
    try:
        status = train.train_config(training.step, chosen, job.on_device, training.seed,
                                    training.progress,
                                    functools.partial(_save_checkpoint, job, training),
                                    hooks=hooks)
    except train.OutOfMemoryInSync:
        _leave_out_of_step(job, training)
    _say_failed(job, training, status)
    return status


def _leave_out_of_step(job, training):
    """Out of GPU memory inside a forward with SyncBatchNorm: the other ranks wait in one of
    its collectives, which this rank cannot meet, so it leaves at once, before any teardown
    that would wait for them; torchrun then ends the others. Everything saved stays: the
    results JSON and the checkpoint of the last epoch's end (a rerun resumes from it)."""
    _print(f"error: rank {job.runtime.rank}: {training.name} ran out of GPU memory at "
           f"batch_size {training.config['batch_size']} inside a forward with SyncBatchNorm "
           f"(sync_bn), whose collectives the other ranks wait in: the ranks cannot stop this "
           f"config together, so the whole run stops. Its checkpoint from the last epoch's end "
           f"is kept. Try a smaller batch_size in CONFIGS, or drop sync_bn.", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_WRITE_FAILED)


def _say_failed(job, training, status):
    """The line for a training that ran out of memory or diverged (nothing otherwise)."""
    name, chosen = training.name, training.config
    if status == "out_of_memory":
        job.say(f"error: {name} ran out of GPU memory at batch_size {chosen['batch_size']}. "
                f"Try a smaller batch_size in CONFIGS; the other configs carry on, and its "
                f"checkpoint is kept.", file=sys.stderr)
    if status == "diverged":
        where = training.progress["diverged_at"]
        job.say(f"{name}: the loss became NaN or infinite at epoch {where['epoch']}, step "
                f"{where['step']}; this config is stopped and marked diverged. A smaller lr "
                f"usually helps.", file=sys.stderr)


def _interrupted(job, stop, number, finished=False):
    """Say where the signal in ``stop`` stopped the run; return the exit status."""
    name = signal.Signals(stop.signals[0]).name
    where = (f"after config_{number} ended; the next configs have not started" if finished
             else f"during config_{number}; its checkpoint is in its run folder in "
             f"{job.out / store.RUNS}/")
    job.say(f"Stopped by {name} {where}. "
            f"{_resume_hint(job.script.file, job.argv, job.runtime.distributed)}",
            file=sys.stderr)
    return signals.EXIT[stop.signals[0]]
