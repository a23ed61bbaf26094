"""The results JSON and the files beside it: what they hold, how they are written, read and
summarised. No torch here: make_report.py reads results where torch is not installed.

Every file is written to a temporary name in the same folder and then renamed over the
target, so a crash mid-write never leaves a half-written result.
"""
import json
import math
import os
import re
import secrets
from pathlib import Path

import numpy as np

from . import plots

# CIFAR-10's classes in label order (0..9), as the results name them.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")

PLOT_FILES = ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png")
# A folder holding any of these is somebody's project, not a place for results.
FOREIGN_MARKERS = (".git", ".hg", ".svn", "pyproject.toml", "setup.py")
SOURCE_SUFFIXES = (".py", ".ipynb")


def foreign_entries(folder):
    """The names in ``folder`` that make it somebody's project (a repository, source files),
    sorted: such a folder is no place for the kit's outputs."""
    return sorted(entry.name for entry in Path(folder).iterdir()
                  if entry.name in FOREIGN_MARKERS or entry.suffix in SOURCE_SUFFIXES)


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


def save_json(data, path):
    text = json.dumps(data, indent=2) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


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


def summary(entries):
    """The report's closing block, as text: one entry per config, mean ± std over seeds."""
    lines = ["Training completed. Results summary:"]
    for runs in plots.group_runs(entries).values():
        lines.append(f"  {config_label(runs[0])}")
        lines.append(f"      {group_outcome(runs)}")
    return "\n".join(lines)
