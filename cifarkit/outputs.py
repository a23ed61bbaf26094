"""The output folder checked before anything trains, the weights written, the run-level
record of a run (its data, devices, versions). The JSON itself: results.py; the runs: store.py.
"""
import importlib.metadata
import os
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch

from .data import data_fingerprint
from .errors import UserError
from .results import foreign_entries, read_json, write_atomically
from .store import RUNS, read_record
from .runtime import precision, recorded_devices


def check_out_dir(path, bytes_needed, data_dir, kit_names, script, results_file):
    """Refuse an output folder that cannot be created or written, that belongs to something
    else (the data set, a repository, source code), or where something stands in the way of
    a file the kit writes there (``kit_names``, relative to it), without touching it: each
    would stop the run only after its first config had trained."""
    def refuse(why, fix="Choose another folder with --out DIR."):
        raise UserError(f"--out {path}: {why}. {fix}")

    try:
        out, data = Path(path).absolute(), Path(data_dir).absolute()
        runs = out / RUNS
        special = {Path(out.anchor): "the root of the file system",
                   Path.home().resolve(): "your home folder"}
        if out.resolve() in special:
            refuse(f"that is {special[out.resolve()]}; results go into a folder of their own",
                   "Choose one with --out DIR.")
        if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
            refuse(f"that is the data folder {data_dir} or inside it; results never go there")
        foreign = foreign_entries(out) if out.is_dir() else []
        listed = f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
        if foreign and runs.is_dir() and all(Path(name).suffix for name in foreign):
            refuse(f"that folder of results holds files this kit did not write {listed}",
                   f"Move {'it' if len(foreign) == 1 else 'them'} out of {path} and rerun: "
                   f"the results there are kept.")
        if foreign:
            refuse(f"that folder holds files this kit did not write {listed}: it looks like a "
                   f"project or source folder. Results go into a folder of their own",
                   "Choose one with --out DIR.")
        inner = sorted(child.name for child in out.iterdir() if (child / RUNS).is_dir()) \
            if out.is_dir() else []
        if inner and not runs.exists():  # a modelset: make_report would refuse it
            refuse(f"that folder holds the scripts' output folders ({inner[0]}/"
                   f"{', ...' if len(inner) > 1 else ''}); a script's results go into a folder "
                   f"of their own inside it", f"Choose one with --out {path}/NAME.")
        store_above = next((folder for folder in [out, *out.parents]
                            if folder.name == RUNS and holds_runs(folder)), None)
        if store_above or (out.is_dir() and read_record(out) is not None):
            refuse(f"that is inside the run store {store_above or out.parent}/, whose runs are "
                   f"written once and never share a folder with views")
        other = read_json(out / results_file)[0]
        if isinstance(other, dict) and other.get("script") not in (script, None):
            refuse(f"that folder holds the results of {other['script']} in {results_file}, "
                   f"which this script would replace; each script's results go into a folder "
                   f"of their own")
        if runs.is_symlink() and not runs.exists():
            refuse(f"{runs} is a link to {os.readlink(runs)}, which does not exist",
                   "Create that folder (a scratch disk not mounted?), or remove the link.")
        blocked = [out / name for name in kit_names
                   if (out / name).exists() and not (out / name).is_file()]
        blocked += [runs] if runs.exists() and not runs.is_dir() else []
        if blocked:
            refuse(f"{blocked[0]} is in the way of a file or folder the kit writes there",
                   "Move it, or choose another folder with --out DIR.")
        existing = next(folder for folder in [out, *out.parents] if folder.exists())
        if existing.is_dir() and shutil.disk_usage(existing).total == 0:  # /proc, /sys
            refuse(f"{existing} is not on a disk (a virtual file system such as /proc or /sys)")
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            refuse(f"cannot write there ({existing} is not a writable folder)")
        free = shutil.disk_usage(existing).free
        if free < bytes_needed:
            refuse(f"only {free / 2**20:.0f} MiB free on that disk; this run needs about "
                   f"{bytes_needed / 2**20:.0f} MiB",
                   "Free some space or choose another folder with --out DIR.")
    except OSError as error:  # a name too long, a loop of links, a folder we may not list
        refuse(error.strerror or error)


def holds_runs(folder):
    """Whether ``folder`` is a run store: a listable folder with a run of this kit in it."""
    try:
        return any(read_record(run) is not None for run in folder.iterdir() if run.is_dir())
    except OSError:  # not there yet, or not ours to list
        return False


def to_cpu(value):
    """A copy of nested dicts/lists of tensors with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def save_weights(model, path):
    """A plain state_dict of the unwrapped model: loads with torch.load(weights_only=True),
    as CPU tensors, so weights trained on a GPU load on a machine without one too."""
    state = to_cpu(model.state_dict())
    try:
        write_atomically(path, lambda file: torch.save(state, file))
    except RuntimeError as error:  # torch.save's way of saying the disk is full
        raise OSError(f"{path}: {str(error).splitlines()[0]}") from None


def new_results(script, dataset, runtime, seed, argv):
    """The run-level half of a results JSON (the header of every run record, too), for
    ``script`` (train.Script)."""
    normalization, name = script.normalization, Path(script.file).name
    launcher = "torchrun ..." if runtime.distributed else "python"
    try:  # torchvision's version from its package record: importing it costs 2 s (torch._dynamo)
        torchvision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision = "not installed"
    return {
        "script": name,
        "command": " ".join([launcher, name] + list(argv)),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "devices": recorded_devices(runtime),
        "world_size": runtime.world_size,
        "backend": runtime.backend or ("DataParallel" if runtime.data_parallel
                                       and torch.cuda.device_count() > 1 else "single process"),
        "data": {"source": dataset.source, "train_images": len(dataset.train_labels),
                 "test_images": len(dataset.test_labels),
                 "fingerprint": data_fingerprint(dataset),
                 "normalization": [list(map(float, values)) for values in normalization]},
        "seed": seed,
        "precision": precision(runtime),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision, "platform": platform.platform()},
        "accuracy_unit": "percent",
        "log_every": script.log_every,
        "weights_file": script.weights_file,
    }
