"""Training, top to bottom: a script's main() calls run(); train_config() is the epoch loop
with the batch loop inside it. Exit status: 0 all finished; 1 a config diverged, ran out of
memory or a file could not be written; 2 bad input; 130 / 143 SIGINT / SIGTERM (saved)."""
import atexit
import contextlib
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoints, cli, config, data, outputs, results, runs, signals, store
from . import runtime as rt
from .errors import UserError
from .results import settings, summary
from .signals import say

# Steps between looks at the loss for NaN and at a stop request (each a host sync).
SYNC_EVERY = {"cpu": 10, "cuda": 100, "mps": 100, "distributed": 25}
BAR_EVERY = 50  # steps between updates of the progress bar's numbers (each is a host sync)
TRAIN_SAMPLE = 5000  # training images scored in eval mode after each epoch (the gap)


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
    data_parallel: bool = False   # nn.DataParallel when several GPUs are visible
    weights_file: str = "config_{number}.pth"  # the weights' names ("model.pth": the baseline)
    log_every: int = 0         # > 0: the running loss every that many mini-batches
    cpu_amp: bool = False      # --amp auto uses bf16 on CPUs that have it in hardware


def run(script, argv=None):
    """Run a report script with the flags ``argv`` (default sys.argv[1:]); its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    signals.plain_console()
    args = cli.parse_args(Path(script.file).name, script.description, script.out_dir,
                          script.default_device, argv, script.cpu_amp)
    with contextlib.ExitStack() as cleanup:  # on leaving: close the runtime, free the runs
        with signals.sigterm_as_interrupt():  # until training installs its own handlers
            try:
                job, selected = prepare(script, args, argv, cleanup)
            except (UserError, KeyboardInterrupt, OSError) as error:
                return signals.stopped_before_training(error, Path(args.out))
        try:
            status = train_selected(job, selected, args)
        except (UserError, KeyboardInterrupt, OSError) as error:
            status = signals.stopped_while_training(error, job)
        except RuntimeError as error:  # dist.DistError is one; gloo raises plain ones
            if not (job.runtime.distributed and rt.peer_lost(error)):
                raise
            status = signals.lost_contact(error, job)
        else:  # every rank leaves together: torchrun stops the others once one has left
            rt.barrier(job.runtime)
    if job.runtime.distributed:  # DDP keeps gloo's threads alive past destroy_process_group;
        atexit.register(rt.leave, status)  # the interpreter's teardown can abort on them
    return status


def prepare(script, args, argv, cleanup):
    """The checks, the data, the runtime, the output folder: (runs.Job, [(number, config)])."""
    all_configs = config.check_configs(script.configs, script.model_settings)
    if args.epochs:
        all_configs = [dict(chosen, num_epochs=args.epochs) for chosen in all_configs]
    selected = cli.select_configs(all_configs, args.configs)
    cli.check_subset(args.subset, selected)
    rt.check_device_request(args.device)
    # Every rank loads (downloads) before the ranks wait on each other: a slow first
    # download must not run into the process group's timeout.
    try:
        dataset = data.load_cifar10(args.data_dir, args.subset, args.seed)
    except data.DataError as error:
        if args.data_dir is not None:
            raise
        raise data.DataError(f"{error}\nWith a copy in DIR, run:\n  " + signals.command(
            script.file, ["--data-dir", "DIR"] + argv)) from None
    runtime = rt.init_runtime(args.device, script.data_parallel, args.amp, args.compile,
                              script.cpu_amp)
    cleanup.callback(rt.close, runtime)
    rt.share_cpu(runtime, say)
    rt.check_configs_fit(selected, runtime)
    configs = {f"config_{number}": chosen for number, chosen in enumerate(all_configs, 1)}
    models = {label: runs.model_identity(script.build_model, chosen, label)
              for label, chosen in configs.items()}
    weights = sum(tensor.numel() * tensor.element_size()
                  for tensor in script.build_model(selected[0][1]).state_dict().values())
    # room for the weights and a checkpoint while its next version is written beside it
    rt.from_main(lambda: outputs.check_out_dir(
        args.out, 5 * weights + 20 * 2**20, args.data_dir or data.DEFAULT_ROOT,
        runs.kit_names(script, selected, args), Path(script.file).name, script.results_file),
        runtime)
    header = outputs.new_results(script, dataset, runtime, args.seed, argv)
    job = runs.Job(runtime=runtime, out=Path(args.out), script=script, argv=argv,
                   configs=configs, models=models,
                   neutral=config.neutral_values(script.model_settings), header=header,
                   restart=args.restart, say=say if runtime.is_main else signals.silent)
    cleanup.callback(runs.release, job)
    for line in rt.from_main(lambda: runs.open_store(job, selected, args.seeds), runtime):
        job.say(line)
    job.say(f"{Path(script.file).name}: {len(dataset.train_labels)} training and "
            f"{len(dataset.test_labels)} test images from {dataset.source}; "
            f"{', '.join(header['devices'])}; {header['precision']}; output {job.out}")
    job.on_device = data.to_device(dataset, script.normalization, runtime.device)
    rt.barrier(runtime)  # the ranks start training together, once rank 0 has tidied up
    return job, selected


def train_selected(job, selected, args):
    """Train each selected config with each seed in turn; the exit status."""
    runtime, seeds = job.runtime, range(args.seed, args.seed + args.seeds)
    statuses = []
    with signals.stop_on_signals(job.say, stop_at_once_on_repeat=not runtime.distributed) as stop:
        for number, chosen in selected:
            for seed in seeds:
                statuses.append(train_one(job, number, chosen, seed, stop))
                if statuses[-1] == "interrupted":
                    return signals.interrupted(job, stop, number)
                if rt.any_rank(stop.requested(), runtime):  # came as the config ended
                    return signals.interrupted(job, stop, number, finished=True)
    if runtime.is_main:
        runs.refresh(job, final=True, drawn=runs.drawn(job))
        chosen = {(f"config_{number}", seed) for number, _ in selected for seed in seeds}
        say(summary([entry for entry in job.results["configs"]
                     if (entry["id"], entry["seed"]) in chosen]))
        say(f"Results, weights and plots are in {job.out}/ (every run in "
            f"{job.out / store.RUNS}/)")
    return 0 if all(status == "finished" for status in statuses) else 1


def train_one(job, number, chosen, seed, stop):
    """Train (or resume, or skip) one config with one seed in its run; return its status."""
    runtime, label = job.runtime, f"config_{number}"
    name = label if seed == job.header["seed"] else f"{label} (seed {seed})"
    run_dir, record, done = rt.from_main(lambda: runs.claim(job, label, chosen, seed, name),
                                         runtime)
    if done:
        job.say(f"{name}: already {record['status']} in {run_dir} "
                f"({results.outcome(record)}); skipped. Use --restart to train it again.")
        return record["status"]
    job.say(f"{name}{' ' + chosen['name'] if 'name' in chosen else ''}: {settings(chosen)}")
    seed_everything(seed)  # every config starts from the same weights
    model = rt.place_model(job.script.build_model(chosen), runtime, chosen.get("sync_bn", False))
    if runtime.rank:
        torch.manual_seed(seed + runtime.rank)  # each rank its own dropout masks
    training = new_training(job, model, chosen, seed, label=label, name=name,
                            run_dir=Path(run_dir), record=record)
    checkpoint = rt.from_main(lambda: checkpoints.load_checkpoint(
        training.run_dir / store.CHECKPOINT), runtime)
    if checkpoint:
        training.progress, note = checkpoints.restore(checkpoint, training, runtime.rank)
        job.say(f"{name}: resuming from its checkpoint after epoch "
                f"{training.progress['epoch']}, step {training.progress['step']}")
        if note:
            job.say(f"{name}: {note}")
        last = training.progress["history"][-1:]
        if last and last[0]["test_accuracy"] is None and runtime.is_main:  # stopped in its
            last[0].update(measure(model, job.on_device, runtime,  # test pass: measure now
                                   chosen.get("tta", False))[0])
    status = train_config(job, training, stop)
    signals.say_failed(job, training, status)
    if status != "interrupted":
        runs.finish(job, training, status)
    return status


def train_config(job, training, stop):
    """Carry ``training`` (a runs.Training: new, or resumed from its checkpoint) to the end
    of its config. Returns "finished", "diverged", "out_of_memory" or "interrupted"."""
    runtime, on_device, chosen, progress = job.runtime, job.on_device, training.config, \
        training.progress
    model, optimizer, scaler = training.model, training.optimizer, training.scaler
    device, log_every = on_device.train_images.device, job.script.log_every
    sync_every = SYNC_EVERY["distributed" if runtime.distributed else device.type]
    estimate, job.estimate_due = Estimate(job, training) if job.estimate_due else None, False
    while progress["epoch"] < chosen["num_epochs"]:
        epoch = progress["epoch"] + 1
        batches = epoch_batches(len(on_device.train_labels), chosen["batch_size"],
                                training.seed, epoch, runtime)
        sums = new_sums(device, progress["sums"] if runtime.is_main else None)
        done, outcome, out_of_memory = progress["step"], None, False
        model.train()
        started, paused = time.perf_counter(), stop.paused
        with progress_bar(len(batches), done, f"epoch {epoch}/{chosen['num_epochs']}",
                          runtime.is_main) as bar:
            for index in batches[done:]:
                rt.take_turn(runtime)  # other runs on this CPU: one at a time
                done, reduced = done + 1, False  # reduced: this step's all-reduce (backward) ran
                try:
                    if not out_of_memory:
                        inputs, targets = data.prepare_batch(
                            on_device.train_images, on_device.train_labels,
                            rt.shard(index, runtime), on_device.scale, on_device.shift,
                            chosen.get("augment", "none"))
                        with autocast(device.type, runtime.amp_dtype):
                            outputs = model(rt.memory_format(inputs))
                            loss = F.cross_entropy(outputs.float(), targets, reduction="sum",
                                                   label_smoothing=chosen.get("label_smoothing", 0))
                        optimizer.zero_grad(set_to_none=True)
                        # the mean over the global batch, however the ranks split it
                        scaler.scale(loss * (runtime.world_size / len(index))).backward()
                        reduced = True
                        scaler.step(optimizer)
                        scaler.update()
                        if training.scheduler is not None:
                            step_schedule(training.scheduler)
                        sums["loss"] += loss.detach()
                        sums["correct"] += (outputs.argmax(dim=1) == targets).sum()
                        sums["images"] += len(targets)
                        if log_every:
                            sums["window"] += loss.detach() / len(index)
                except torch.cuda.OutOfMemoryError:
                    out_of_memory = True
                if out_of_memory and not runtime.distributed:
                    outcome = "out_of_memory"
                    break
                if out_of_memory and not reduced:  # outside the except: its traceback holds memory
                    keep_company(job, training)
                elif estimate is not None:
                    estimate.step()
                show_progress(bar, done, sums)
                if log_every and done % log_every == 0:
                    log_loss(job, progress, sums, epoch, done)
                # The look: one NaN keeps the loss sum non-finite; the ranks agree on a stop here
                look = done % sync_every == 0 or done == len(batches)
                stopping = (look or not runtime.distributed) and stop.requested()
                if look:
                    diverged, out_of_memory, stopping = rt.any_rank_each(
                        [~sums["loss"].isfinite(), out_of_memory, stopping], runtime)
                    outcome = "out_of_memory" if out_of_memory else "diverged" if diverged else None
                outcome = outcome or ("stopped" if stopping else None)
                if outcome:
                    break
        rt.synchronize(device)  # the epoch's time includes its queued GPU work
        sums["seconds"] += time.perf_counter() - started - (stop.paused - paused)
        sums = global_sums(sums, runtime)
        if outcome in ("diverged", "out_of_memory"):
            if outcome == "diverged":
                progress["diverged_at"] = {"epoch": epoch, "step": done}
            return outcome
        if done < len(batches):
            progress.update(step=done, sums=sums)
            save_checkpoint(job, training)
            return "interrupted"
        progress["history"].append({
            "epoch": epoch, "train_loss": sums["loss"].item() / sums["images"],
            "train_accuracy": 100.0 * sums["correct"].item() / sums["images"],
            "test_accuracy": None, "lr": optimizer.param_groups[0]["lr"],
            "seconds": sums["seconds"]})
        progress.update(epoch=epoch, step=0, sums=None)
        save_checkpoint(job, training)  # before the test pass: a stop there loses nothing
        if runtime.is_main:  # the other ranks go on to the next epoch and wait for it there
            test_pass(job, training, stop, estimate)
        if epoch < chosen["num_epochs"] and rt.any_rank(stop.requested(), runtime):
            return "interrupted"
    return "finished"


def log_loss(job, progress, sums, epoch, done):
    """The tutorial's running loss over the last ``log_every`` steps, printed and kept."""
    loss = rt.all_sum(sums["window"].clone(), job.runtime).item() / job.script.log_every
    progress["batch_losses"].append({"epoch": epoch, "batch": done, "loss": loss})
    job.say(f"epoch {epoch}: batch {done} loss: {loss:.3f}")
    sums["window"].zero_()


def test_pass(job, training, stop, estimate):
    """Rank 0, after an epoch: measure the weights, say the epoch's line, record it."""
    record, chosen, epoch = training.progress["history"][-1], training.config, \
        training.progress["epoch"]
    stop.doing = f"the test pass of epoch {epoch} (the epoch itself is saved)"
    measured, training.predictions = measure(training.model, job.on_device, job.runtime,
                                             chosen.get("tta", False))
    record.update(measured)
    stop.doing = "the current step"
    job.say(f"{training.name} epoch {epoch}/{chosen['num_epochs']}: loss "
            f"{record['train_loss']:.4f}, train acc {record['train_accuracy']:.2f}%, "
            f"test acc {record['test_accuracy']:.2f}%, {record['seconds']:.1f} s")
    if estimate is not None:
        estimate.epoch_end()
    if training.run_dir is not None:
        runs.record(job, training, "running")


def fit(model, chosen, on_device, runtime, seed=0):
    """train_config without a run folder (nothing saved or said), as the benchmarks time it;
    the runs.Training, whose progress holds the history."""
    job = runs.Job(runtime=runtime, out=None, script=Script(*[None] * 7), argv=[], configs={},
                   models={}, neutral={}, header={}, restart=False, say=signals.silent,
                   on_device=on_device, estimate_due=False)
    training = new_training(job, model, chosen, seed, label="config_1", name="config_1",
                            run_dir=None, record={})
    train_config(job, training, signals.StopRequest())
    return training


def new_training(job, model, chosen, seed, **run):
    """``model`` at its first step, as a runs.Training; ``run``: label, name, run_dir, record."""
    runtime, optimizer = job.runtime, make_optimizer(model, chosen, job.runtime)
    steps = steps_per_epoch(len(job.on_device.train_labels), chosen["batch_size"], runtime)
    return runs.Training(seed=seed, config=chosen, model=model, optimizer=optimizer,
                         scheduler=make_scheduler(optimizer, chosen, steps),
                         scaler=torch.amp.GradScaler(runtime.device.type,  # fp16: loss scaling
                                                     enabled=runtime.amp_dtype == torch.float16),
                         progress=new_progress(), steps_per_epoch=steps, **run)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_progress():
    """Where a config's training stands; a checkpoint saves exactly this (plus the states)."""
    return {"epoch": 0, "step": 0, "sums": None, "history": [], "batch_losses": [],
            "diverged_at": None}


def new_sums(device, saved=None):
    """An epoch's totals on the device, in float64 (exact for float32 losses, whatever the
    order; MPS has none); a resumed epoch's are global, carried by rank 0."""
    dtype = torch.float32 if device.type == "mps" else torch.float64
    if saved is not None:
        return {key: value.to(device, dtype if value.is_floating_point() else value.dtype)
                if isinstance(value, torch.Tensor) else value for key, value in saved.items()}
    zero = torch.zeros((), dtype=dtype, device=device)
    return {"loss": zero, "window": zero.clone(), "images": 0, "seconds": 0.0,
            "correct": torch.zeros((), dtype=torch.int64, device=device)}


def epoch_batches(train_count, batch_size, seed, epoch, runtime):
    """One epoch's global batches: the first steps_per_epoch of data.batch_order's."""
    steps = steps_per_epoch(train_count, batch_size, runtime)
    return data.batch_order(train_count, batch_size, seed, epoch)[:steps]


def steps_per_epoch(train_count, batch_size, runtime):
    """An epoch's batches: all, less a last one too small to split over the ranks or to train
    BatchNorm (one image)."""
    full, last = divmod(train_count, batch_size)
    smallest = runtime.world_size if runtime.distributed else 2
    return full + (last > 0 and (last >= smallest or full == 0))


def make_optimizer(model, chosen, runtime):
    """SGD, fused on CPU and CUDA, but not beside fp16's scaler (a skipped first step leaves
    fused SGD's momentum uninitialised)."""
    fused = runtime.device.type in ("cpu", "cuda") and runtime.amp_dtype != torch.float16
    return torch.optim.SGD(model.parameters(), lr=chosen["lr"], momentum=chosen["momentum"],
                           weight_decay=chosen["weight_decay"],
                           nesterov=chosen.get("nesterov", False), fused=fused)


def make_scheduler(optimizer, chosen, steps):
    """None for a constant lr; "onecycle": linear warm-up over the first ``peak_at`` (default
    20%) of all steps, then linear decay to zero, stepped after every batch."""
    if chosen.get("schedule", "constant") == "constant":
        return None
    total = chosen["num_epochs"] * steps
    warmup = max(1, int(chosen.get("peak_at", 0.2) * total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        (step + 1) / warmup if step < warmup else max(0.0, (total - step) / (total - warmup + 1))))


def step_schedule(scheduler):
    """Step the schedule, silencing torch's warning when fp16's scaler skipped the first step."""
    if scheduler.last_epoch > 0:  # the warning concerns the first step only
        return scheduler.step()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def autocast(device_type, dtype):
    """Autocast in ``dtype``; nothing for None (a disabled autocast still costs time)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def progress_bar(total, initial, description, enabled):
    """A tqdm bar on a terminal; silent into a file or a pipe, and on every rank but 0."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="batch", leave=False,
                dynamic_ncols=True, disable=not (enabled and sys.stderr.isatty()))


def show_progress(bar, done, sums):
    if not bar.disable:
        bar.update(1)
        if done % BAR_EVERY == 0:
            images = max(sums["images"], 1)
            bar.set_postfix(loss=f"{sums['loss'].item() / images:.3f}",
                            acc=f"{100 * sums['correct'].item() / images:.1f}%")


def keep_company(job, training):
    """Out of memory under torchrun: a zero-loss step, so that DDP's all-reduce the others wait
    in gets this rank's part, until they agree to stop (SyncBatchNorm's cannot be met: leave)."""
    torch.cuda.empty_cache()
    if training.config.get("sync_bn"):
        signals.leave_out_of_step(job, training)
    on_device = job.on_device
    batch = rt.memory_format(torch.addcmul(on_device.shift, on_device.train_images[:1].float(),
                                           on_device.scale))
    with autocast(on_device.train_images.device.type, job.runtime.amp_dtype):
        (training.model(batch).float().sum() * 0).backward()


def global_sums(sums, runtime):
    """The epoch's totals over every rank (the same dict in one process)."""
    if not runtime.distributed:
        return sums
    device = sums["loss"].device
    totals = torch.stack([sums["loss"], sums["correct"].double(),
                          torch.tensor(float(sums["images"]), dtype=torch.float64, device=device),
                          sums["window"]])
    loss, correct, images, window = rt.all_sum(totals, runtime).tolist()
    return dict(sums, loss=torch.tensor(loss, dtype=torch.float64, device=device),
                correct=torch.tensor(int(round(correct)), device=device), images=int(round(images)),
                window=torch.tensor(window, dtype=torch.float64, device=device))


def save_checkpoint(job, training):
    """Every rank's random-number state, and on rank 0 the checkpoint of the training."""
    if training.run_dir is None:  # fit(): nothing is saved
        return
    rng_states = rt.gather(checkpoints.rng_state(), job.runtime)
    if job.runtime.is_main:
        checkpoints.save_checkpoint(training.run_dir / store.CHECKPOINT,
                                    training.record["identity"], training, rng_states)


@torch.inference_mode()
def predict(model, images, scale, shift, runtime, tta=False, both=False):
    """Predicted class of every image, as a CPU tensor; with ``tta`` the logits of each image
    and of its mirror image are added. ``both``: (without TTA, with TTA or None)."""
    model = rt.unwrap(model).eval()
    plain, mirrored = [], []
    for start in range(0, len(images), 1000):
        rt.take_turn(runtime)
        batch = rt.memory_format(torch.addcmul(shift, images[start:start + 1000].float(), scale))
        with autocast(images.device.type, runtime.amp_dtype):
            logits = model(batch).float()
            plain.append(logits.argmax(dim=1).cpu())
            if tta:
                logits += model(batch.flip(3)).float()
                mirrored.append(logits.argmax(dim=1).cpu())
    plain, mirrored = torch.cat(plain), torch.cat(mirrored) if tta else None
    rt.end_turn(runtime)  # the test pass ends the turn: then come files and plots
    return (plain, mirrored) if both else plain if mirrored is None else mirrored


def measure(model, data_, runtime, tta):
    """An epoch's end, in eval mode: (the test accuracy, with and without TTA, and the same on
    a fixed sample of training images, for the gap; the test predictions)."""
    plain, mirrored = predict(model, data_.test_images, data_.scale, data_.shift, runtime, tta,
                              both=True)
    record = {"test_accuracy": accuracy(plain if mirrored is None else mirrored,
                                        data_.test_labels)}
    if mirrored is not None:
        record["test_accuracy_without_tta"] = accuracy(plain, data_.test_labels)
    sample = train_sample(len(data_.train_labels), len(data_.test_labels))
    sample = sample.to(data_.train_images.device)
    record["train_accuracy_eval"] = accuracy(predict(
        model, data_.train_images[sample], data_.scale, data_.shift, runtime, tta),
        data_.train_labels[sample])
    return record, plain if mirrored is None else mirrored


def train_sample(train_count, test_count):
    """The fixed training images scored after every epoch: as many as the test set, up to
    TRAIN_SAMPLE."""
    order = torch.randperm(train_count, generator=torch.Generator().manual_seed(0))
    return order[:min(train_count, test_count, TRAIN_SAMPLE)].sort().values


def accuracy(predictions, labels):
    return 100.0 * (predictions == labels.cpu()).float().mean().item()


# The first config is timed from its 10th step to its 40th, or until 2 s have passed.
ESTIMATE_STEPS, ESTIMATE_SECONDS = (10, 40), 2.0


class Estimate:
    """How long an epoch and the whole run take here, at the first config's speed per image;
    corrected once by a later epoch under half or over twice that."""

    def __init__(self, job, training):
        self.job, self.training = job, training
        self.started, self.steps, self.marks = time.perf_counter(), 0, []
        self.told, self.ended, self.corrected = None, None, False
        self.resumed = self.epochs = training.progress["epoch"]  # a resumed run's, trained

    def step(self):
        self.steps += 1
        first, last = ESTIMATE_STEPS
        if self.steps < first or len(self.marks) == 2 or self.steps % first:
            return
        rt.synchronize(self.job.runtime.device)
        self.marks.append(time.perf_counter())
        if len(self.marks) == 2 and (self.steps < last
                                     or self.marks[1] - self.marks[0] < ESTIMATE_SECONDS):
            self.marks.pop()  # not yet
        elif len(self.marks) == 2:
            trained = len(self.job.on_device.train_labels)
            tested = len(self.job.on_device.test_labels)
            scored = tested + len(train_sample(trained, tested))  # forward only: ~1/3 a step
            per_image = (self.marks[1] - self.marks[0]) / (self.steps - first) \
                / self.training.config["batch_size"]
            self.tell(per_image * (trained + scored / 3))

    def epoch_end(self):
        now, self.epochs = time.perf_counter(), self.epochs + 1
        if len(self.marks) < 2:
            first = ESTIMATE_STEPS[0]
            begun, skipped = ((self.marks[0], first) if self.marks and self.steps > first
                              else (self.started, 0))
            self.marks[:] = [begun, now]
            # a whole epoch's steps: a run resumed mid-epoch has trained only its last ones
            self.tell((now - begun) * self.training.steps_per_epoch / max(self.steps - skipped, 1))
        elif self.ended is not None and not self.corrected and \
                self.epochs < self.job.epochs_to_train[1] \
                and not 0.5 <= (now - self.ended) / self.told <= 2:
            self.corrected, epoch = True, now - self.ended
            rest = (self.job.epochs_to_train[1] - self.epochs) * epoch
            self.job.say(f"{self.training.name}: an epoch takes about {results.duration(epoch)} "
                         f"here, not {results.duration(self.told)} as estimated: the rest needs "
                         f"about {results.duration(rest)}.")
        self.ended = now

    def tell(self, epoch):
        job, name = self.job, self.training.name
        runs_, epochs = job.epochs_to_train
        device = job.runtime.device
        where = {"cpu": "this CPU", "mps": "this Mac's GPU (MPS)"}.get(device.type) or \
            f"this GPU ({torch.cuda.get_device_name(device)})"
        quick = " For a quick look: --subset 5000 --epochs 2." if epochs * epoch > 600 and \
            not any(arg.startswith("--subset") for arg in job.argv) else ""
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        busy = (f" This machine is busy with other work (load {load:.1f} on {cores} cores): "
                f"times here may be several times those of a quiet machine.") \
            if load > cores else ""
        job.say(f"{name}: about {results.duration(epoch)} an epoch on {where}; the {runs_} run(s) "
                f"to train need about {results.duration((epochs - self.resumed) * epoch)} in all."
                f"{quick}{busy}")
        self.told = epoch
