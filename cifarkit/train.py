"""The epoch loop and evaluation: numbers in, numbers out. Devices live in runtime.py."""
import contextlib
import random
import sys
import time

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
    GPU never waits for the host."""
    return {"loss": torch.zeros((), device=device), "images": 0, "seconds": 0.0,
            "correct": torch.zeros((), dtype=torch.int64, device=device),
            "window": torch.zeros((), device=device)}


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


def train_epoch(model, optimizer, images, labels, batches, scale, shift, sums, runtime, recipe,
                start_step=0, stop_requested=None, log_every=0, on_log=None, bar=None):
    """Train on ``batches[start_step:]``, adding into ``sums``; return (steps done, diverged).

    Each batch is a global batch; under torchrun this rank trains on its shard of it. Returns
    early, after a whole step, when ``stop_requested()`` turns true or the loss stops being
    finite. ``on_log(step, mean_loss)`` runs every ``log_every`` steps (the tutorial's
    running loss). ``recipe`` (from ``step_recipe``) holds augmentation, label smoothing,
    mixed precision and the learning-rate scheduler.
    """
    model.train()
    kind = "distributed" if runtime.distributed else images.device.type
    sync_every = SYNC_EVERY[kind]
    step = start_step
    for index in batches[start_step:]:
        step += 1
        inputs, targets = prepare_batch(images, labels, rt.shard(index, runtime), scale, shift,
                                        recipe["augment"])
        with autocast(images.device.type, recipe["amp_dtype"]):
            outputs = model(rt.memory_format(inputs))
            loss_sum = F.cross_entropy(outputs.float(), targets, reduction="sum",
                                       label_smoothing=recipe["label_smoothing"])
        # Divided by the global batch size (times the ranks that DDP averages over), the
        # gradient is the mean over the whole batch, however it is split.
        optimizer.zero_grad(set_to_none=True)
        recipe["scaler"].scale(loss_sum * (runtime.world_size / len(index))).backward()
        recipe["scaler"].step(optimizer)
        recipe["scaler"].update()
        if recipe["scheduler"] is not None:
            recipe["scheduler"].step()
        sums["loss"] += loss_sum.detach()
        sums["correct"] += (outputs.argmax(dim=1) == targets).sum()
        sums["images"] += len(targets)
        if bar is not None and not bar.disable:
            bar.update(1)
            if step % BAR_EVERY == 0:  # the live numbers cost a host sync: not every step
                bar.set_postfix(loss=f"{sums['loss'].item() / sums['images']:.3f}",
                                acc=f"{100 * sums['correct'].item() / sums['images']:.1f}%")
        if log_every:
            sums["window"] += loss_sum.detach() / len(index)
            if step % log_every == 0:
                on_log(step, rt.all_sum(sums["window"].clone(), runtime).item() / log_every)
                sums["window"].zero_()
        if step % sync_every == 0 or step == len(batches):
            # Losses are never negative, so one NaN or inf keeps the sum non-finite.
            if rt.any_rank(not sums["loss"].isfinite(), runtime):
                return step, True
        if stop_requested is not None and (not runtime.distributed or step % sync_every == 0):
            if rt.any_rank(stop_requested(), runtime):
                return step, False
    return step, False


@torch.inference_mode()
def predict(model, images, scale, shift, runtime, tta=False, batch_size=1000):
    """Predicted class of every image, as a CPU tensor; with ``tta`` the logits of each image
    and of its mirror image are added (flip test-time augmentation)."""
    model.eval()
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = torch.addcmul(shift, images[start:start + batch_size].float(), scale)
        batch = rt.memory_format(batch)
        with autocast(images.device.type, runtime.amp_dtype):
            logits = model(batch).float()
            if tta:
                logits += model(batch.flip(3)).float()
        predictions.append(logits.argmax(dim=1).cpu())
    return torch.cat(predictions)


def confusion_matrix(predictions, labels, classes=10):
    """counts[true, predicted] as a classes x classes int64 tensor."""
    pairs = labels.cpu() * classes + predictions.cpu()
    return torch.bincount(pairs, minlength=classes * classes).view(classes, classes)


def accuracy(predictions, labels):
    return 100.0 * (predictions == labels.cpu()).float().mean().item()


def make_optimizer(model, config, runtime):
    # One kernel for all parameters, but not beside a GradScaler (fp16): when the scaler
    # skips the first step (an overflow, common at its first scale), torch's fused SGD
    # leaves the momentum buffers it just allocated uninitialised, and the next step
    # spreads that garbage into the weights (seen on the CPU kernel with torch 2.14).
    scaled = runtime.amp_dtype == torch.float16
    fused = True if runtime.device.type == "cuda" and not scaled else None
    return torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                           weight_decay=config["weight_decay"],
                           nesterov=config.get("nesterov", False), fused=fused)


def epoch_batches(train_count, batch_size, seed, epoch, runtime):
    """The global batches of one epoch; under torchrun a last batch smaller than the number
    of ranks cannot be split, so it is dropped."""
    batches = batch_order(train_count, batch_size, seed, epoch)
    if runtime.distributed and len(batches[-1]) < runtime.world_size:
        batches = batches[:-1]
    return batches


def make_scheduler(optimizer, config, steps):
    """None for a constant lr; "onecycle": linear warm-up over the first 20% of all steps,
    then linear decay to zero, stepped after every batch."""
    if config.get("schedule", "constant") == "constant":
        return None
    total = config["num_epochs"] * steps
    warmup = max(1, int(0.2 * total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        (step + 1) / warmup if step < warmup else max(0.0, (total - step) / (total - warmup + 1))))


def make_scaler(runtime):
    """fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op). Made by
    the caller, not per call of train_config, so that a checkpoint saves its scale and a
    resumed run carries on from it."""
    return torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)


def step_recipe(config, runtime, scheduler, scaler=None):
    """What every training step of ``config`` needs besides the model and the data."""
    return {"augment": config.get("augment", "none"),
            "label_smoothing": config.get("label_smoothing", 0.0),
            "amp_dtype": runtime.amp_dtype, "scheduler": scheduler,
            "scaler": scaler if scaler is not None else make_scaler(runtime)}


def new_progress():
    """Where a config's training stands; a checkpoint saves exactly this (plus the states)."""
    return {"epoch": 0, "step": 0, "sums": None, "history": [], "batch_losses": [],
            "diverged_at": None}


def train_config(model, optimizer, config, data, seed, progress, save, runtime, scheduler=None,
                 stop_requested=None, log_every=0, on_log=None, on_epoch=None, scaler=None):
    """Carry ``progress`` (new, or from a checkpoint) to the end of ``config``.

    ``data`` is (train_images, train_labels, test_images, test_labels, scale, shift), all on
    the training device. ``save(progress)`` runs after every epoch and on interruption, on
    every rank. Returns "finished", "diverged" or "interrupted"; ``progress`` holds the
    history (test accuracy is measured on rank 0).
    """
    train_images, train_labels, test_images, test_labels, scale, shift = data
    device = train_images.device
    recipe = step_recipe(config, runtime, scheduler, scaler)
    while progress["epoch"] < config["num_epochs"]:
        epoch = progress["epoch"] + 1
        batches = epoch_batches(len(train_labels), config["batch_size"], seed, epoch, runtime)
        # Resumed partial sums are global: rank 0 carries them, the others start at zero.
        sums = _sums_on(progress["sums"] if runtime.is_main else None, device)

        def log(step, loss):
            progress["batch_losses"].append({"epoch": epoch, "batch": step, "loss": loss})
            on_log(epoch, step, loss)

        started = time.perf_counter()
        with progress_bar(len(batches), progress["step"], f"epoch {epoch}/{config['num_epochs']}",
                          runtime.is_main) as bar:
            step, diverged = train_epoch(model, optimizer, train_images, train_labels, batches,
                                         scale, shift, sums, runtime, recipe,
                                         progress["step"], stop_requested, log_every, log, bar)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sums["seconds"] += time.perf_counter() - started
        sums = _global_sums(sums, runtime)
        if diverged:
            progress["diverged_at"] = {"epoch": epoch, "step": step}
            return "diverged"
        if step < len(batches):
            progress.update(step=step, sums=sums)
            save(progress)
            return "interrupted"
        progress["history"].append(_epoch_record(epoch, sums, optimizer, model, data, runtime,
                                                 config.get("tta", False)))
        progress.update(epoch=epoch, step=0, sums=None)
        save(progress)
        if on_epoch:
            on_epoch(progress["history"][-1])
        if stop_requested is not None and epoch < config["num_epochs"]:
            if rt.any_rank(stop_requested(), runtime):
                return "interrupted"
    return "finished"


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
    return dict(sums, loss=torch.tensor(loss, device=device),
                correct=torch.tensor(int(round(correct)), device=device),
                images=int(round(images)), window=torch.tensor(window, device=device))


def _epoch_record(epoch, sums, optimizer, model, data, runtime, tta):
    _, _, test_images, test_labels, scale, shift = data
    record = {"epoch": epoch,
              "train_loss": sums["loss"].item() / sums["images"],
              "train_accuracy": 100.0 * sums["correct"].item() / sums["images"],
              "test_accuracy": None,
              "lr": optimizer.param_groups[0]["lr"],
              "seconds": sums["seconds"]}
    if runtime.is_main:  # the other ranks go on to the next epoch and wait for it there
        bare = rt.unwrap(model)
        record["test_accuracy"] = accuracy(
            predict(bare, test_images, scale, shift, runtime, tta), test_labels)
        if tta:
            record["test_accuracy_without_tta"] = accuracy(
                predict(bare, test_images, scale, shift, runtime), test_labels)
    return record
