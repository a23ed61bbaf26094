"""Devices and parallel wrapping, the epoch loop, evaluation: numbers in, numbers out."""
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import batch_order, prepare_batch
from .errors import UserError

DIVERGENCE_CHECK_EVERY = 100  # steps between looks at the loss on a GPU (each one a host sync)


def select_device(requested):
    """The one place that turns --device into a torch.device."""
    if requested not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {requested}: choose auto, cpu or cuda.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch here "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). "
                        "Use --device cpu or auto.")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def parallel_devices(device, data_parallel):
    """Names of the devices a model on ``device`` trains on (several under DataParallel)."""
    if device.type != "cuda":
        return ["cpu"]
    count = torch.cuda.device_count() if data_parallel else 1
    return [f"cuda:{index} ({torch.cuda.get_device_name(index)})" for index in range(count)]


def place_model(model, device, data_parallel):
    """Move ``model`` to ``device``; wrap it in nn.DataParallel when asked and GPUs are many."""
    model = model.to(device)
    if data_parallel and device.type == "cuda" and torch.cuda.device_count() > 1:
        model = nn.DataParallel(model)
    return model


def unwrap(model):
    """The bare model, whose state_dict has no ``module.`` prefix."""
    return model.module if isinstance(model, nn.DataParallel) else model


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_sums(device):
    """Running totals of one epoch. They stay on the device and are read once an epoch, so a
    GPU never waits for the host (the CPU is checked every step: there it costs nothing)."""
    return {"loss": torch.zeros((), device=device), "images": 0, "seconds": 0.0,
            "correct": torch.zeros((), dtype=torch.int64, device=device),
            "window": torch.zeros((), device=device)}


def train_epoch(model, optimizer, images, labels, batches, scale, shift, sums, start_step=0,
                stop_requested=None, log_every=0, on_log=None):
    """Train on ``batches[start_step:]``, adding into ``sums``; return (steps done, diverged).

    Returns early, after a whole step, when ``stop_requested()`` turns true or the loss stops
    being finite. ``on_log(step, mean_loss)`` runs every ``log_every`` steps (the tutorial's
    running loss); divergence is looked for every ``DIVERGENCE_CHECK_EVERY`` steps on a GPU.
    """
    model.train()
    check_every = 1 if images.device.type == "cpu" else DIVERGENCE_CHECK_EVERY
    step = start_step
    for index in batches[start_step:]:
        step += 1
        inputs, targets = prepare_batch(images, labels, index, scale, shift)
        outputs = model(inputs)
        loss = F.cross_entropy(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums["loss"] += loss.detach() * len(targets)
        sums["correct"] += (outputs.argmax(dim=1) == targets).sum()
        sums["images"] += len(targets)
        if log_every:
            sums["window"] += loss.detach()
            if step % log_every == 0:
                on_log(step, sums["window"].item() / log_every)
                sums["window"].zero_()
        # Losses are never negative, so one NaN or inf keeps the sum non-finite.
        if (step % check_every == 0 or step == len(batches)) and not sums["loss"].isfinite():
            return step, True
        if stop_requested is not None and stop_requested():
            return step, False
    return step, False


@torch.inference_mode()
def predict(model, images, scale, shift, batch_size=1000):
    """Predicted class of every image, as a CPU tensor."""
    model.eval()
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = torch.addcmul(shift, images[start:start + batch_size].float(), scale)
        predictions.append(model(batch).argmax(dim=1).cpu())
    return torch.cat(predictions)


def accuracy(predictions, labels):
    return 100.0 * (predictions == labels.cpu()).float().mean().item()


def make_optimizer(model, config):
    return torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                           weight_decay=config["weight_decay"])


def new_progress():
    """Where a config's training stands; a checkpoint saves exactly this (plus the states)."""
    return {"epoch": 0, "step": 0, "sums": None, "history": [], "batch_losses": [],
            "diverged_at": None}


def train_config(model, optimizer, config, data, seed, progress, save, stop_requested=None,
                 log_every=0, on_log=None, on_epoch=None):
    """Carry ``progress`` (new, or from a checkpoint) to the end of ``config``.

    ``data`` is (train_images, train_labels, test_images, test_labels, scale, shift), all on
    the training device. ``save(progress)`` runs after every epoch and on interruption.
    Returns "finished", "diverged" or "interrupted"; ``progress`` holds the history.
    """
    train_images, train_labels, test_images, test_labels, scale, shift = data
    device = train_images.device
    while progress["epoch"] < config["num_epochs"]:
        epoch = progress["epoch"] + 1
        batches = batch_order(len(train_labels), config["batch_size"], seed, epoch)
        sums = _sums_on(progress["sums"], device)

        def log(step, loss):
            progress["batch_losses"].append({"epoch": epoch, "batch": step, "loss": loss})
            on_log(epoch, step, loss)

        started = time.perf_counter()
        step, diverged = train_epoch(model, optimizer, train_images, train_labels, batches,
                                     scale, shift, sums, progress["step"], stop_requested,
                                     log_every, log)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sums["seconds"] += time.perf_counter() - started
        if diverged:
            progress["diverged_at"] = {"epoch": epoch, "step": step}
            return "diverged"
        if step < len(batches):
            progress.update(step=step, sums=sums)
            save(progress)
            return "interrupted"
        progress["history"].append(_epoch_record(epoch, sums, optimizer, model, data))
        progress.update(epoch=epoch, step=0, sums=None)
        save(progress)
        if on_epoch:
            on_epoch(progress["history"][-1])
        if stop_requested is not None and stop_requested() and epoch < config["num_epochs"]:
            return "interrupted"
    return "finished"


def _sums_on(saved, device):
    if saved is None:
        return new_sums(device)
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in saved.items()}


def _epoch_record(epoch, sums, optimizer, model, data):
    _, _, test_images, test_labels, scale, shift = data
    return {"epoch": epoch,
            "train_loss": sums["loss"].item() / sums["images"],
            "train_accuracy": 100.0 * sums["correct"].item() / sums["images"],
            "test_accuracy": accuracy(predict(model, test_images, scale, shift), test_labels),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": sums["seconds"]}
