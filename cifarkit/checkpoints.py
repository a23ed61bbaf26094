"""Per-config checkpoints: everything needed to carry on exactly where training stopped.

A checkpoint holds the model, the optimizer, every random-number state, the history so far
and the position inside the current epoch. It is only ever read with
``torch.load(weights_only=True)``, so a file that is not one of ours is refused, never run.
"""
import random
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .outputs import to_cpu
from .results import write_atomically
from .runtime import unwrap

FORMAT = "cifarkit-checkpoint-1"


def rng_state():
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "position": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached_gaussian": float(numpy_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state):
    """Restore ``state``; returns a note when it cannot all be restored, else None.

    A checkpoint holds one CUDA state per GPU that was visible when it was saved; the GPUs
    visible now take theirs by index, and the states of GPUs that are gone are dropped
    (torch.cuda.set_rng_state_all would fail on them)."""
    torch.set_rng_state(state["torch"])
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(state["cuda"][:gpus]):
        torch.cuda.set_rng_state(cuda_state, index)
    if state.get("mps") is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    if len(state["cuda"]) > gpus:
        return (f"saved with {len(state['cuda'])} GPU(s) visible, resumed with {gpus}: the "
                f"random-number states of the missing GPUs are dropped, so from here the run "
                f"is no longer guaranteed bit-identical to an uninterrupted one")
    return None


def save_checkpoint(path, identity, training, rng_states):
    """Write atomically: a crash mid-write leaves the previous checkpoint in place.
    ``training`` (runs.Training) gives the model (saved unwrapped), optimizer, scheduler and
    GradScaler; ``rng_states`` holds one ``rng_state()`` per rank."""
    scheduler, scaler = training.scheduler, training.scaler
    checkpoint = {"format": FORMAT, "identity": identity,
                  "model": to_cpu(unwrap(training.model).state_dict()),
                  "optimizer": to_cpu(training.optimizer.state_dict()), "rng": rng_states,
                  "scheduler": scheduler.state_dict() if scheduler is not None else None,
                  "scaler": scaler.state_dict() if scaler is not None else None,
                  "progress": to_cpu(training.progress)}
    try:
        write_atomically(path, lambda file: torch.save(checkpoint, file))
    except RuntimeError as error:  # torch.save's way of saying the disk is full
        raise OSError(f"{path}: {str(error).splitlines()[0]}") from None


def load_checkpoint(path):
    """The checkpoint at ``path``, or None when there is none; refuses anything else."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:  # intact perhaps, but not ours to read
        raise UserError(f"{path}: cannot be read ({error.strerror or error}). Give yourself "
                        f"read access to it (chmod u+r), or move it away.") from None
    except Exception:  # torch's own text would suggest weights_only=False: never for this
        checkpoint = None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint written by this kit (damaged, or another "
                        f"program's file; it was only read as data, nothing in it ran).")
    return checkpoint


def restore(checkpoint, training, rank=0):
    """Load a checkpoint's states into ``training``'s model, optimizer, scheduler and scaler;
    return (its progress, a note for the user or None). Each rank takes back its own
    random-number state (rank 0's if the ranks changed)."""
    unwrap(training.model).load_state_dict(checkpoint["model"])
    optimizer, scheduler, scaler = training.optimizer, training.scheduler, training.scaler
    # keep this run's choice of SGD kernel (fused or not), made for its device and precision
    kernels = [(group.get("fused"), group.get("foreach")) for group in optimizer.param_groups]
    optimizer.load_state_dict(checkpoint["optimizer"])
    for group, (fused, foreach) in zip(optimizer.param_groups, kernels):
        group.update(fused=fused, foreach=foreach)
    if scheduler is not None and checkpoint.get("scheduler"):
        scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):  # {} or None outside fp16
        scaler.load_state_dict(checkpoint["scaler"])
    states = checkpoint["rng"]
    note = set_rng_state(states[rank] if rank < len(states) else states[0])
    return checkpoint["progress"], note
