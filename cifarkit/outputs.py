"""Everything a run leaves behind: weights, the results JSON, the PNGs, the printed summary.

Every file is written to a temporary name in the same folder and then renamed over the
target, so a crash mid-write never leaves a half-written result.
"""
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import plots
from .data import CLASSES, data_fingerprint
from .errors import UserError
from .runtime import device_names, precision

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PLOT_FILES = ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png")
# A folder holding any of these is somebody's project, not a place for results.
FOREIGN_MARKERS = (".git", ".hg", ".svn", "pyproject.toml", "setup.py")
SOURCE_SUFFIXES = (".py", ".ipynb")


def foreign_entries(folder):
    """The names in ``folder`` that make it somebody's project (a repository, source files),
    sorted: such a folder is no place for the kit's outputs."""
    return sorted(entry.name for entry in Path(folder).iterdir()
                  if entry.name in FOREIGN_MARKERS or entry.suffix in SOURCE_SUFFIXES)


def check_out_dir(path, bytes_needed, data_dir, kit_names=PLOT_FILES):
    """Refuse an output folder that cannot be created or written, that belongs to something
    else (the data set, a repository, source code), or where something stands in the way of
    a file the kit writes there (``kit_names``, relative to it), without touching it."""
    try:
        _check_out_dir(path, bytes_needed, data_dir, kit_names)
    except OSError as error:  # a name too long, a loop of links, a folder we may not list
        raise UserError(f"--out {path}: {error.strerror or error}. Choose another folder "
                        f"with --out DIR.") from None


def _check_out_dir(path, bytes_needed, data_dir, kit_names):
    out = Path(path).absolute()
    data = Path(data_dir).absolute()
    special = {Path(out.anchor): "the root of the file system",
               Path.home().resolve(): "your home folder"}
    if out.resolve() in special:
        raise UserError(f"--out {path}: that is {special[out.resolve()]}; results go into a "
                        f"folder of their own: choose one with --out DIR.")
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise UserError(f"--out {path}: that is the data folder {data_dir} or inside it; results "
                        f"never go there. Choose another folder with --out DIR.")
    if out.is_dir():
        foreign = foreign_entries(out)
        if foreign:
            raise UserError(f"--out {path}: that folder holds files this kit did not write "
                            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): "
                            f"it looks like a project or source folder. Results go into a "
                            f"folder of their own: choose one with --out DIR.")
    _check_nothing_in_the_way(out, path, kit_names)
    _check_disk(out, path, bytes_needed)


def _check_nothing_in_the_way(out, path, kit_names):
    """A folder (or pipe) where the kit writes a file, or a file or broken link where it
    keeps its checkpoints, would stop the run only after its first config had trained."""
    checkpoints = out / "checkpoints"
    if checkpoints.is_symlink() and not checkpoints.exists():
        raise UserError(f"--out {path}: {checkpoints} is a link to {os.readlink(checkpoints)}, "
                        f"which does not exist. Create that folder (a scratch disk not "
                        f"mounted?), or remove the link.")
    blocked = [out / name for name in kit_names
               if (out / name).exists() and not (out / name).is_file()]
    if checkpoints.exists() and not checkpoints.is_dir():
        blocked.append(checkpoints)
    if blocked:
        raise UserError(f"--out {path}: {blocked[0]} is in the way of a file or folder the "
                        f"kit writes there. Move it, or choose another folder with --out DIR.")


def _check_disk(out, path, bytes_needed):
    existing = out
    while not existing.exists():
        existing = existing.parent
    if existing.is_dir() and shutil.disk_usage(existing).total == 0:  # /proc, /sys
        raise UserError(f"--out {path}: {existing} is not on a disk (a virtual file system "
                        f"such as /proc or /sys). Choose another folder with --out DIR.")
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: cannot write there ({existing} is not a writable "
                        f"folder). Choose another folder with --out DIR.")
    free = shutil.disk_usage(existing).free
    if free < bytes_needed:
        raise UserError(f"--out {path}: only {free / 2**20:.0f} MiB free on that disk; this run "
                        f"needs about {bytes_needed / 2**20:.0f} MiB. Free some space or "
                        f"choose another folder with --out DIR.")


@contextlib.contextmanager
def locked(out_dir):
    """Hold an exclusive lock on ``out_dir`` (created if need be) for the whole run, so two
    runs never write one folder at once. The lock is the kernel's (flock on the folder
    itself): it goes with the process, so a run killed with kill -9 leaves nothing that
    blocks the next one, and no lock file is written."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out_dir}: cannot write there ({error.strerror or error}). "
                        f"Choose another folder with --out DIR.") from None
    if fcntl is None:  # Windows: no flock; one run per folder is then up to the user
        yield
        return
    handle = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--out {out_dir}: another run is writing to that folder right "
                            f"now. Wait for it to finish, or give this run a folder of its "
                            f"own with --out DIR.") from None
        yield
    finally:
        os.close(handle)  # closing releases the lock


def load_results(path):
    """The results JSON at ``path``: a dict, None when absent, "unreadable" when broken or
    not of the shape this kit writes (a hand-edited file, say)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():  # a folder, or a named pipe that would never end a read
        return "unreadable"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):  # RecursionError: a deeply nested one
        return "unreadable"
    return results if _well_formed(results) else "unreadable"


RUN_KEYS = {"script": str, "started": str, "seed": int, "data": dict, "configs": list}
ENTRY_KEYS = {"id": str, "seed": int, "config": dict, "status": str, "history": list}
STATUSES = ("finished", "diverged", "out_of_memory", "running")
FINISHED_NUMBERS = ("final_test_accuracy", "best_test_accuracy", "train_seconds")


def _well_formed(results):
    """Whether ``results`` has every field that resuming, the summary and the report read,
    of the right type (a hand-edited file may not), and each (config, seed) once."""
    def has(record, keys):
        return isinstance(record, dict) and all(
            isinstance(record.get(key), kind) and not isinstance(record.get(key), bool)
            for key, kind in keys.items())

    def entry_ok(entry):
        if not has(entry, ENTRY_KEYS) or not re.fullmatch(r"config_\d+", entry["id"]) \
                or entry["status"] not in STATUSES:
            return False
        if entry["status"] == "diverged" and not has(entry.get("diverged_at"),
                                                     {"epoch": int, "step": int}):
            return False
        return entry["status"] != "finished" or all(
            isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool)
            and math.isfinite(entry[key]) for key in FINISHED_NUMBERS)

    if not has(results, RUN_KEYS) or not all(entry_ok(entry) for entry in results["configs"]):
        return False
    runs = [(entry["id"], entry["seed"]) for entry in results["configs"]]
    return len(runs) == len(set(runs))


def write_atomically(path, write):
    """Call ``write(file_object)`` on a temporary file, then rename it to ``path``.

    The temporary file is opened with mode 0o666 less the umask, as any new file would be
    (tempfile.mkstemp would make it 0o600, unreadable to the user's colleagues)."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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


def save_json(data, path):
    text = json.dumps(data, indent=2) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def environment():
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "platform": platform.platform()}


def new_results(script, dataset, normalization, runtime, seed, argv):
    """The run-level half of a results JSON; configs are appended as they finish."""
    launcher = "torchrun ..." if runtime.distributed else "python"
    return {
        "script": script,
        "command": " ".join([launcher, script] + list(argv)),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "devices": device_names(runtime),
        "world_size": runtime.world_size,
        "backend": runtime.backend or ("DataParallel" if runtime.data_parallel
                                       and torch.cuda.device_count() > 1 else "single process"),
        "data": {"source": dataset.source, "train_images": len(dataset.train_labels),
                 "test_images": len(dataset.test_labels),
                 "fingerprint": data_fingerprint(dataset),
                 "normalization": [list(map(float, values)) for values in normalization]},
        "seed": seed,
        "precision": precision(runtime),
        "versions": environment(),
        "accuracy_unit": "percent",
        "configs": [],
    }


def settings(config):
    return ", ".join(f"{key}={value}" for key, value in config.items()
                     if key not in plots.NOT_SETTINGS)


def config_label(entry):
    name = f" {entry['config']['name']}" if "name" in entry["config"] else ""
    return f"{entry['id']}{name}: {settings(entry['config'])}"


def config_entry(label, seed, config, status, progress, weights_name):
    """One config's record (one seed of it) in the results JSON."""
    history = progress["history"]
    best = max(history, key=lambda record: record["test_accuracy"], default=None)
    entry = {"id": label, "seed": seed, "config": config, "status": status,
             "history": history,
             "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
             "final_train_accuracy": history[-1]["train_accuracy"] if history else None,
             "best_test_accuracy": best["test_accuracy"] if best else None,
             "best_epoch": best["epoch"] if best else None,
             "train_seconds": sum(record["seconds"] for record in history),
             "weights": weights_name if status == "finished" else None}
    if progress["diverged_at"]:
        entry["diverged_at"] = progress["diverged_at"]
    if progress["batch_losses"]:
        entry["batch_losses"] = progress["batch_losses"]
    return entry


def is_best(entry, entries):
    """Whether ``entry`` has the highest final test accuracy among the finished runs."""
    finished = [other for other in entries if other["status"] == "finished"]
    return entry["final_test_accuracy"] >= max(other["final_test_accuracy"] for other in finished)


def outcome(entry):
    if entry["status"] == "diverged":
        where = entry["diverged_at"]
        return f"DIVERGED at epoch {where['epoch']}, step {where['step']}"
    if entry["status"] != "finished":
        return entry["status"].upper().replace("_", " ")
    return (f"final test accuracy {entry['final_test_accuracy']:.2f}% "
            f"(best {entry['best_test_accuracy']:.2f}%)")


def mean_std(values):
    """'m ± s' of a list of numbers (just 'm' for one)."""
    array = np.asarray(values, dtype=float)
    if len(array) == 1:
        return f"{array[0]:.2f}"
    return f"{array.mean():.2f} ± {array.std(ddof=1):.2f}"


def group_outcome(runs):
    """The summary line of one config over its seeds."""
    if len(runs) == 1:
        return f"{outcome(runs[0])}, training time {runs[0]['train_seconds']:.2f} s"
    finished = [run for run in runs if run["status"] == "finished"]
    failed = [f"seed {run['seed']} {outcome(run)}" for run in runs if run not in finished]
    text = f"{len(runs)} seeds"
    if finished:
        text += (f": final test accuracy {mean_std([r['final_test_accuracy'] for r in finished])}%"
                 f" (mean ± std over {len(finished)}), training time "
                 f"{mean_std([r['train_seconds'] for r in finished])} s")
    return text + "".join(f"; {failure}" for failure in failed)


def plot_run(entries, out_dir, script, log_every, run=None):
    """loss.png, train_accuracy.png, test_accuracy.png; the baseline's loss.png shows the
    running loss it prints every ``log_every`` mini-batches. ``run``: the results JSON (its
    data, devices), for the subtitle saying what the curves were measured on."""
    title = Path(script).stem
    note = plots.subtitle(run, entries)
    with_batch_losses = log_every and any(entry.get("batch_losses") for entry in entries)
    for file_name, key, y_label, span in plots.PLOTS:
        if file_name == "loss.png" and with_batch_losses:
            figure = plots.batch_loss_figure(
                entries, f"{title}: loss every {log_every} mini-batches", log_every, note)
        else:
            figure = plots.history_figure(entries, key, f"{title}: {y_label.split(' (')[0]}",
                                          y_label, span, note,
                                          plots.train_sample_size(run))
        content = plots.png_bytes(figure)
        write_atomically(Path(out_dir) / file_name, lambda file: file.write(content))


def plot_examples(on_device, predictions, entry, script, out_dir, count=32):
    """examples.png: ``count`` test images, spread over the test set, with the predictions
    of the best run so far."""
    test_images, test_labels = on_device.test_images, on_device.test_labels
    pick = torch.linspace(0, len(test_labels) - 1, min(count, len(test_labels))).long()
    correct = sum(int(predictions[index]) == int(test_labels[index]) for index in pick)
    figure = plots.examples_figure(test_images.cpu()[pick], test_labels.cpu()[pick].tolist(),
                                   predictions[pick].tolist(), CLASSES,
                                   f"{Path(script).stem}, {config_label(entry)}\n"
                                   f"{correct} of these {len(pick)} right; "
                                   f"{entry['final_test_accuracy']:.1f}% of all "
                                   f"{len(test_labels):,} test images")
    content = plots.png_bytes(figure)
    write_atomically(Path(out_dir) / "examples.png", lambda file: file.write(content))


def summary(entries):
    """The report's closing block, as text: one entry per config, mean ± std over seeds."""
    lines = ["Training completed. Results summary:"]
    for runs in plots.group_runs(entries).values():
        lines.append(f"  {config_label(runs[0])}")
        lines.append(f"      {group_outcome(runs)}")
    return "\n".join(lines)
