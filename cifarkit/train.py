"""The epoch loop and evaluation: numbers in, numbers out. Devices live in runtime.py."""
import contextlib
import random
import sys
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import runtime as rt
from .data import batch_order, prepare_batch

# Steps between looks at the loss for NaN and, under torchrun, at a stop request: each look
# is a host sync (and, with several ranks, one all-reduce), so not every step on a GPU; on
# the CPU a look costs about 30 microseconds, 2% of a LeNet step at batch 4.
SYNC_EVERY = {"cpu": 10, "cuda": 100, "distributed": 25}
BAR_EVERY = 50  # steps between updates of the progress bar's loss and accuracy


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_sums(device):
    """Running totals of one epoch. They stay on the device and are read once an epoch, so a
    GPU never waits for the host. Losses add up in float64, where adding float32 step losses
    is exact, so the totals do not depend on the order of the additions: a run resumed
    mid-epoch under torchrun (rank 0 carries the ranks' partial sums) records the history of
    an uninterrupted one (in float32 its train_loss differed in the 7th digit)."""
    return {"loss": torch.zeros((), dtype=torch.float64, device=device), "images": 0,
            "seconds": 0.0, "correct": torch.zeros((), dtype=torch.int64, device=device),
            "window": torch.zeros((), dtype=torch.float64, device=device)}


def progress_bar(total, initial, description, enabled):
    """A tqdm bar on a terminal; silent when output goes to a file or a pipe, so logs stay
    readable, and on every rank but 0."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="batch", leave=False,
                dynamic_ncols=True, disable=not (enabled and sys.stderr.isatty()))


def autocast(device_type, dtype):
    """Mixed precision in ``dtype``, or nothing when it is None (entering a disabled
    torch.autocast costs about 6 microseconds, which LeNet at batch 4 pays 12,500 times an
    epoch)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


@dataclass
class Step:
    """What every training step needs besides the data (made by ``make_step``): the model
    (placed: wrapped for DataParallel or DDP where the run uses them), its optimizer, the
    runtime (ranks and devices; mixed precision in ``runtime.amp_dtype``), the learning-rate
    scheduler (None for a constant lr), the GradScaler (fp16's loss scaling; a no-op in bf16
    and fp32), and the config's augmentation and label smoothing."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    runtime: rt.Runtime
    scheduler: object               # a torch.optim.lr_scheduler, stepped after every batch; or None
    scaler: torch.amp.GradScaler
    augment: str                    # a key of data.AUGMENTATIONS
    label_smoothing: float
    sync_bn: bool = False           # SyncBatchNorm under torchrun: collectives in the forward


class OutOfMemoryInSync(Exception):
    """Out of memory inside a forward whose SyncBatchNorm layers hold collectives: the other
    ranks wait in one of them, which no step of this rank can meet (train_epoch)."""


@dataclass
class Hooks:
    """What the caller hears and says while a config trains; each one optional.

    ``stop_requested()`` asks training to stop (under torchrun it counts only at a look,
    where the ranks agree on it). ``on_log(epoch, step, mean_loss)`` runs every
    ``log_every`` steps (the tutorial's running loss; train_epoch is handed a copy whose
    ``on_log(step, mean_loss)`` train_config has bound to the epoch); ``on_step()`` after
    every step (the up-front time estimate). ``on_evaluate(epoch)`` runs as an epoch's test
    pass starts, ``on_epoch(record, predictions)`` when it ends, with the test set's
    predicted classes (rank 0 only)."""
    stop_requested: Callable = None
    log_every: int = 0
    on_log: Callable = None
    on_evaluate: Callable = None
    on_epoch: Callable = None
    on_step: Callable = None


def train_epoch(step, data, batches, sums, start_step=0, hooks=None, bar=None):
    """Train ``step.model`` on ``batches[start_step:]`` of ``data`` (data.OnDevice), adding
    into ``sums``; return (steps done, outcome).

    outcome is None (the epoch ended), "stopped" (``hooks.stop_requested()`` turned true),
    "diverged" (the loss stopped being finite) or "out_of_memory" (a CUDA out-of-memory
    error on any rank); the ranks of a torchrun job learn each of these together, at the next
    look (every ``SYNC_EVERY`` steps), and end the epoch together. With SyncBatchNorm they
    cannot: OutOfMemoryInSync is raised instead. Each batch is a global
    batch; under torchrun this rank trains on its shard of it. ``hooks`` (Hooks) says when
    to log, what to call after every step and whether to stop.
    """
    hooks = hooks if hooks is not None else Hooks()
    runtime, log_every = step.runtime, hooks.log_every
    step.model.train()
    kind = "distributed" if runtime.distributed else data.train_images.device.type
    sync_every = SYNC_EVERY[kind]
    done, out_of_memory = start_step, False
    for index in batches[start_step:]:
        done += 1
        if not out_of_memory:
            out_of_memory = _runs_out_of_memory(step, data, index, sums, log_every)
            if out_of_memory and step.sync_bn:
                raise OutOfMemoryInSync()
            if out_of_memory and not runtime.distributed:
                return done, "out_of_memory"
        if out_of_memory:
            _keep_ranks_company(step, data)
        elif hooks.on_step is not None:
            hooks.on_step()
        _show_progress(bar, done, sums)
        if log_every and done % log_every == 0:
            hooks.on_log(done, rt.all_sum(sums["window"].clone(), runtime).item() / log_every)
            sums["window"].zero_()
        at_look = done % sync_every == 0 or done == len(batches)
        outcome = _outcome(at_look, out_of_memory, sums, hooks.stop_requested, runtime)
        if outcome is not None:
            return done, outcome
    return done, None


def _runs_out_of_memory(step, data, index, sums, log_every):
    """Train on the global batch ``index``; True when that ran out of CUDA memory."""
    out_of_memory = False
    try:
        loss_sum = _train_step(step, data, index, sums)
        if log_every:
            sums["window"] += loss_sum / len(index)
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True
    if out_of_memory:  # outside the except block, whose traceback holds the memory
        torch.cuda.empty_cache()
    return out_of_memory


def _show_progress(bar, done, sums):
    if bar is not None and not bar.disable:
        bar.update(1)
        if done % BAR_EVERY == 0:  # the live numbers cost a host sync: not every step
            bar.set_postfix(loss=f"{sums['loss'].item() / max(sums['images'], 1):.3f}",
                            acc=f"{100 * sums['correct'].item() / max(sums['images'], 1):.1f}%")


def _outcome(at_look, out_of_memory, sums, stop_requested, runtime):
    """How the epoch ends after this step ("stopped", "diverged", "out_of_memory"), or None
    when it goes on."""
    # Under torchrun a stop request counts only at a look, where the ranks agree on it.
    stop = (at_look or not runtime.distributed) and stop_requested is not None \
        and stop_requested()
    if at_look:
        # Losses are never negative, so one NaN or inf keeps the sum non-finite.
        diverged, out_of_memory, stop = rt.any_rank_each(
            [~sums["loss"].isfinite(), out_of_memory, stop], runtime)
        if out_of_memory or diverged:
            return "out_of_memory" if out_of_memory else "diverged"
        if stop:
            return "stopped"
    elif stop and not runtime.distributed:  # one process needs nobody's agreement
        return "stopped"
    return None


def _train_step(step, data, index, sums):
    """One optimizer step on this rank's share of the global batch ``index``."""
    runtime, scaler = step.runtime, step.scaler
    inputs, targets = prepare_batch(data.train_images, data.train_labels,
                                    rt.shard(index, runtime), data.scale, data.shift,
                                    step.augment)
    with autocast(data.train_images.device.type, runtime.amp_dtype):
        outputs = step.model(rt.memory_format(inputs))
        loss_sum = F.cross_entropy(outputs.float(), targets, reduction="sum",
                                   label_smoothing=step.label_smoothing)
    # Divided by the global batch size (times the ranks that DDP averages over), the
    # gradient is the mean over the whole batch, however it is split.
    step.optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_sum * (runtime.world_size / len(index))).backward()
    scaler.step(step.optimizer)
    scaler.update()
    if step.scheduler is not None:
        _step_schedule(step.scheduler)
    sums["loss"] += loss_sum.detach()
    sums["correct"] += (outputs.argmax(dim=1) == targets).sum()
    sums["images"] += len(targets)
    return loss_sum.detach()


def _step_schedule(scheduler):
    """The schedule counts every step, skipped or not. A loss scaler that skips the very
    first (its scale overflowed, as it may while it finds one) makes torch warn that the
    schedule stepped before the optimizer: true, harmless, and not the user's to fix."""
    if scheduler.last_epoch > 0:  # the warning concerns the first step only
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def _keep_ranks_company(step, data):
    """After running out of memory under torchrun, until the ranks next compare notes: a
    forward and backward of one image with a zero loss, so that DistributedDataParallel's
    gradient all-reduce, which the other ranks are waiting in, has this rank's (zero) part
    and nobody hangs. The weights are not stepped; the config is stopped at the next look
    and its in-memory weights are thrown away (its last checkpoint is kept). An
    out-of-memory error in the middle of the backward pass, after some of the all-reduces
    began, cannot be mended this way: then torchrun ends the job."""
    batch = rt.memory_format(torch.addcmul(data.shift, data.train_images[:1].float(), data.scale))
    with autocast(data.train_images.device.type, step.runtime.amp_dtype):
        (step.model(batch).float().sum() * 0).backward()


def predict(model, images, scale, shift, runtime, tta=False, batch_size=1000):
    """Predicted class of every image, as a CPU tensor; with ``tta`` the logits of each image
    and of its mirror image are added (flip test-time augmentation)."""
    plain, mirrored = _predictions(model, images, scale, shift, runtime, tta, batch_size)
    return plain if mirrored is None else mirrored


@torch.inference_mode()
def _predictions(model, images, scale, shift, runtime, tta, batch_size=1000):
    """(predictions from each image alone, from each image and its mirror or None): with
    TTA both come from one pass over the images."""
    model.eval()
    plain, mirrored = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.addcmul(shift, images[start:start + batch_size].float(), scale)
        batch = rt.memory_format(batch)
        with autocast(images.device.type, runtime.amp_dtype):
            logits = model(batch).float()
            plain.append(logits.argmax(dim=1).cpu())
            if tta:
                logits += model(batch.flip(3)).float()
                mirrored.append(logits.argmax(dim=1).cpu())
    return torch.cat(plain), torch.cat(mirrored) if tta else None


def evaluate(model, images, labels, scale, shift, runtime, tta=False):
    """{"test_accuracy": ...} of ``model`` on ``images``; with ``tta`` that is the accuracy
    with the mirror images and "test_accuracy_without_tta" the one without (no extra pass)."""
    plain, mirrored = _predictions(rt.unwrap(model), images, scale, shift, runtime, tta)
    return _accuracies(plain, mirrored, labels)


def _accuracies(plain, mirrored, labels):
    if mirrored is None:
        return {"test_accuracy": accuracy(plain, labels)}
    return {"test_accuracy": accuracy(mirrored, labels),
            "test_accuracy_without_tta": accuracy(plain, labels)}


def confusion_matrix(predictions, labels, classes=10):
    """counts[true, predicted] as a classes x classes int64 tensor."""
    pairs = labels.cpu() * classes + predictions.cpu()
    return torch.bincount(pairs, minlength=classes * classes).view(classes, classes)


def accuracy(predictions, labels):
    return 100.0 * (predictions == labels.cpu()).float().mean().item()


def make_optimizer(model, config, runtime):
    """SGD with torch's fused kernel (one call per step for all parameters; on CUDA, and on
    the CPU, where it steps the same weights to float rounding and measured 1.10x the default
    kernel's speed for a LeNet step at batch 4 over 15 alternating rounds: within this
    machine's drift, benchmarks/RESULTS.md), but not beside a GradScaler (fp16): when the
    scaler skips the first step (an overflow, common at its first scale), the fused SGD
    leaves the momentum buffers it just allocated uninitialised, and the next step spreads
    that garbage into the weights (seen on the CPU kernel with torch 2.14). Where a device has no fused kernel, the default one."""
    scaled = runtime.amp_dtype == torch.float16
    parameters = list(model.parameters())  # read twice when the fused kernel is refused
    settings = dict(lr=config["lr"], momentum=config["momentum"],
                    weight_decay=config["weight_decay"], nesterov=config.get("nesterov", False))
    if not scaled:
        try:
            return torch.optim.SGD(parameters, fused=True, **settings)
        except RuntimeError:  # "fused=True requires ... tensors of supported devices"
            pass
    return torch.optim.SGD(parameters, **settings)


def epoch_batches(train_count, batch_size, seed, epoch, runtime):
    """The global batches of one epoch; under torchrun a last batch smaller than the number
    of ranks cannot be split, so it is dropped."""
    batches = batch_order(train_count, batch_size, seed, epoch)
    if runtime.distributed and len(batches[-1]) < runtime.world_size:
        batches = batches[:-1]
    return batches


def make_scheduler(optimizer, config, steps):
    """None for a constant lr; "onecycle": linear warm-up over the first ``peak_at`` (default
    20%) of all steps, then linear decay to zero, stepped after every batch. With
    warmup = max(1, int(peak_at * total)), step s (from 0) trains at lr * (s + 1) / warmup
    up to the peak at s = warmup - 1, then at lr * (total - s) / (total - warmup + 1)."""
    if config.get("schedule", "constant") == "constant":
        return None
    total = config["num_epochs"] * steps
    warmup = max(1, int(config.get("peak_at", 0.2) * total))  # 0.2: as before the key existed
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        (step + 1) / warmup if step < warmup else max(0.0, (total - step) / (total - warmup + 1))))


def make_scaler(runtime):
    """fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op). Made by
    the caller and handed to make_step, not made per call of train_config, so that a
    checkpoint saves its scale and a resumed run carries on from it."""
    return torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)


def make_step(model, optimizer, config, runtime, scheduler=None, scaler=None):
    """What every training step of ``config`` needs besides the data (a Step); a new
    GradScaler (make_scaler) when ``scaler`` is None."""
    return Step(model, optimizer, runtime, scheduler,
                scaler if scaler is not None else make_scaler(runtime),
                augment=config.get("augment", "none"),
                label_smoothing=config.get("label_smoothing", 0.0),
                sync_bn=bool(config.get("sync_bn")) and runtime.distributed)


def new_progress():
    """Where a config's training stands; a checkpoint saves exactly this (plus the states)."""
    return {"epoch": 0, "step": 0, "sums": None, "history": [], "batch_losses": [],
            "diverged_at": None}


def train_config(step, config, data, seed, progress, save, hooks=None):
    """Carry ``progress`` (new, or from a checkpoint) to the end of ``config``.

    ``step`` (make_step) is what every training step needs; ``data`` is the data set on the
    training device (data.OnDevice). ``save(progress)`` runs after every epoch (before its
    test pass, so a stop during the test pass loses nothing) and on interruption, on every
    rank. ``hooks`` (Hooks) are called as training goes. Returns "finished", "diverged",
    "out_of_memory" or "interrupted"; ``progress`` holds the history (test accuracy is
    measured on rank 0).
    """
    hooks = hooks if hooks is not None else Hooks()
    runtime, history, tta = step.runtime, progress["history"], config.get("tta", False)
    if history and history[-1]["test_accuracy"] is None and runtime.is_main:
        # stopped during the last test pass: the weights are that epoch's, measure them now
        history[-1].update(_measure(step.model, data, runtime, tta)[0])
    while progress["epoch"] < config["num_epochs"]:
        epoch = progress["epoch"] + 1
        batches = epoch_batches(len(data.train_labels), config["batch_size"], seed, epoch,
                                runtime)
        done, outcome, sums = _run_epoch(step, data, batches, progress,
                                         _logging_into(progress, epoch, hooks),
                                         f"epoch {epoch}/{config['num_epochs']}")
        if outcome == "diverged":
            progress["diverged_at"] = {"epoch": epoch, "step": done}
        if outcome in ("diverged", "out_of_memory"):
            return outcome
        if done < len(batches):
            progress.update(step=done, sums=sums)
            save(progress)
            return "interrupted"
        history.append(_train_record(epoch, sums, step.optimizer))
        progress.update(epoch=epoch, step=0, sums=None)
        save(progress)
        if runtime.is_main:  # the other ranks go on to the next epoch and wait for it there
            _test_pass(step, data, tta, epoch, history[-1], hooks)
        if hooks.stop_requested is not None and epoch < config["num_epochs"]:
            if rt.any_rank(hooks.stop_requested(), runtime):
                return "interrupted"
    return "finished"


def _logging_into(progress, epoch, hooks):
    """``hooks`` for train_epoch in ``epoch``: each running loss logged is also kept in
    ``progress["batch_losses"]``."""
    def log(step, loss):
        progress["batch_losses"].append({"epoch": epoch, "batch": step, "loss": loss})
        hooks.on_log(epoch, step, loss)

    return replace(hooks, on_log=log)


def _run_epoch(step, data, batches, progress, hooks, description):
    """train_epoch from ``progress["step"]`` under a progress bar, timed; returns (steps
    done, outcome, the epoch's sums over every rank)."""
    runtime, device = step.runtime, data.train_images.device
    # Resumed partial sums are global: rank 0 carries them, the others start at zero.
    sums = _sums_on(progress["sums"] if runtime.is_main else None, device)
    started = time.perf_counter()
    with progress_bar(len(batches), progress["step"], description, runtime.is_main) as bar:
        done, outcome = train_epoch(step, data, batches, sums, progress["step"], hooks, bar)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sums["seconds"] += time.perf_counter() - started
    return done, outcome, _global_sums(sums, runtime)


def _test_pass(step, data, tta, epoch, record, hooks):
    """Rank 0's test pass after ``epoch``, its numbers added to the epoch's ``record``:
    ``hooks.on_evaluate(epoch)`` as it starts, ``hooks.on_epoch(record, predictions)`` when
    it ends."""
    if hooks.on_evaluate:
        hooks.on_evaluate(epoch)
    measured, predictions = _measure(step.model, data, step.runtime, tta)
    record.update(measured)
    if hooks.on_epoch:
        hooks.on_epoch(record, predictions)


def _sums_on(saved, device):
    if saved is None:
        return new_sums(device)
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in saved.items()}


def _global_sums(sums, runtime):
    """The epoch's totals over every rank (the same dict in one process)."""
    if not runtime.distributed:
        return sums
    totals = torch.stack([sums["loss"].double(), sums["correct"].double(),
                          torch.tensor(float(sums["images"]), dtype=torch.float64,
                                       device=sums["loss"].device),
                          sums["window"].double()])
    loss, correct, images, window = rt.all_sum(totals, runtime).tolist()
    device = sums["loss"].device
    return dict(sums, loss=torch.tensor(loss, dtype=torch.float64, device=device),
                correct=torch.tensor(int(round(correct)), device=device),
                images=int(round(images)),
                window=torch.tensor(window, dtype=torch.float64, device=device))


# At most this many training images are scored in eval mode at each epoch's end (half a test
# pass at most): enough to measure the train-test gap to within about a point.
TRAIN_SAMPLE = 5000


def train_sample(train_count, test_count):
    """The training images scored in eval mode after every epoch: the same ones every epoch,
    in every config and run (a fixed draw), as many as the test set up to TRAIN_SAMPLE."""
    order = torch.randperm(train_count, generator=torch.Generator().manual_seed(0))
    return order[:min(train_count, test_count, TRAIN_SAMPLE)].sort().values


def _measure(model, data, runtime, tta):
    """An epoch's end, in eval mode: the test accuracy (with and without TTA when ``tta``),
    and "train_accuracy_eval", the same measure on a fixed sample of the training images:
    unlike the running "train_accuracy" (the mean over an epoch whose weights kept changing,
    with dropout on), it is measured like the test accuracy, so their difference is the
    generalisation gap. Returns (that record, the test predictions: what ``predict`` gives)."""
    plain, mirrored = _predictions(rt.unwrap(model), data.test_images, data.scale, data.shift,
                                   runtime, tta)
    record = _accuracies(plain, mirrored, data.test_labels)
    sample = train_sample(len(data.train_labels), len(data.test_labels))
    sample = sample.to(data.train_images.device)
    on_train = evaluate(model, data.train_images[sample], data.train_labels[sample],
                        data.scale, data.shift, runtime, tta)
    return (dict(record, train_accuracy_eval=on_train["test_accuracy"]),
            plain if mirrored is None else mirrored)


def _train_record(epoch, sums, optimizer):
    """An epoch's line of the history; rank 0 adds the test accuracy after the save."""
    return {"epoch": epoch,
            "train_loss": sums["loss"].item() / sums["images"],
            "train_accuracy": 100.0 * sums["correct"].item() / sums["images"],
            "test_accuracy": None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": sums["seconds"]}
