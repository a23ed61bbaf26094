"""Devices and parallel wrapping, the epoch loop, evaluation: numbers in, numbers out."""
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import batch_order, prepare_batch
from .errors import UserError


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


def train_epoch(model, optimizer, images, labels, batches, scale, shift,
                log_every=0, on_log=None):
    """One pass over ``batches``; returns mean loss and accuracy (percent).

    Loss and correct counts stay on the device and are read once, at the end, so a GPU is
    never made to wait for the host. ``on_log(step, mean_loss)`` is called every
    ``log_every`` steps (the tutorial's running loss).
    """
    model.train()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    window_loss = torch.zeros((), device=images.device)
    for step, index in enumerate(batches, start=1):
        inputs, targets = prepare_batch(images, labels, index, scale, shift)
        outputs = model(inputs)
        loss = F.cross_entropy(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(targets)
        correct += (outputs.argmax(dim=1) == targets).sum()
        if log_every:
            window_loss += loss.detach()
            if step % log_every == 0:
                on_log(step, window_loss.item() / log_every)
                window_loss.zero_()
    seen = sum(len(index) for index in batches)
    return loss_sum.item() / seen, 100.0 * correct.item() / seen


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


def train_config(model, config, data, seed, log_every=0, on_log=None, on_epoch=None):
    """Train ``model`` (already placed) on ``config``; return the per-epoch history.

    ``data`` is (train_images, train_labels, test_images, test_labels, scale, shift), all on
    the training device. ``on_epoch(record)`` sees each epoch's numbers as they come.
    """
    train_images, train_labels, test_images, test_labels, scale, shift = data
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"],
                                momentum=config["momentum"],
                                weight_decay=config["weight_decay"])
    history = []
    for epoch in range(1, config["num_epochs"] + 1):
        started = time.perf_counter()
        batches = batch_order(len(train_labels), config["batch_size"], seed, epoch)
        log = (lambda step, loss: on_log(epoch, step, loss)) if on_log else None
        train_loss, train_accuracy = train_epoch(model, optimizer, train_images, train_labels,
                                                 batches, scale, shift, log_every, log)
        if train_images.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        test_accuracy = accuracy(predict(model, test_images, scale, shift), test_labels)
        record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                  "test_accuracy": test_accuracy, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": seconds}
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return history
