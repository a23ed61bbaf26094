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

EARLIER_PREFIX = "earlier-"  # subfolders holding results that a later run moved aside


PLOT_FILES = ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png")
CHECKPOINT_NAME = re.compile(r"(?P<label>config_\d+)_seed(?P<seed>\d+)\.ckpt")
# A folder holding any of these is somebody's project, not a place for results.
FOREIGN_MARKERS = (".git", ".hg", ".svn", "pyproject.toml", "setup.py")
SOURCE_SUFFIXES = (".py", ".ipynb")


def foreign_entries(folder):
    """The names in ``folder`` that make it somebody's project (a repository, source files),
    sorted: such a folder is no place for the kit's outputs."""
    return sorted(entry.name for entry in Path(folder).iterdir()
                  if entry.name in FOREIGN_MARKERS or entry.suffix in SOURCE_SUFFIXES)


def check_out_dir(path, bytes_needed, data_dir):
    """Refuse an output folder that cannot be created or written, or that belongs to
    something else (the data set, a repository, source code), without touching it."""
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
    # A folder where the kit writes a file (or a file where it keeps its checkpoints) would
    # stop the run only after its first config had trained.
    blocked = [out / name for name in PLOT_FILES if (out / name).is_dir()]
    if (out / "checkpoints").exists() and not (out / "checkpoints").is_dir():
        blocked.append(out / "checkpoints")
    if blocked:
        raise UserError(f"--out {path}: {blocked[0]} is in the way of a file or folder the "
                        f"kit writes there. Move it, or choose another folder with --out DIR.")
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


def weights_stem(pattern, number):
    """The weights file name of config ``number`` without ".pth" and the seed: config_3 for
    "config_{number}.pth"; for a pattern without a number (the baseline's "model.pth"),
    "model" for config 1 and "model_config_3" for the others, so configs never share one."""
    if "{number}" in pattern:
        return pattern.format(number=number)[:-len(".pth")]
    return pattern[:-len(".pth")] + ("" if number == 1 else f"_config_{number}")


def weights_name(pattern, number, seed, base_seed):
    """config_N.pth for the run's own seed; config_N_seedS.pth for the extra seeds."""
    stem = weights_stem(pattern, number)
    return f"{stem}.pth" if seed == base_seed else f"{stem}_seed{seed}.pth"


def _weights_regex(pattern, number=None):
    """What weights_name() writes for config ``number`` (any config when None)."""
    if number is not None:
        stem = re.escape(weights_stem(pattern, number))
    elif "{number}" in pattern:
        stem = re.escape(pattern[:-len(".pth")]).replace(re.escape("{number}"), r"\d+")
    else:
        stem = re.escape(pattern[:-len(".pth")]) + r"(_config_\d+)?"
    return re.compile(stem + r"(_seed\d+)?\.pth")


def kit_files(out_dir, results_file, weights_pattern):
    """The files in ``out_dir`` that this kit writes (results JSON, weights, PNGs,
    checkpoints): the only ones it ever moves. Anything else there is left alone."""
    out_dir = Path(out_dir)
    weights = _weights_regex(weights_pattern)
    found = [out_dir / name for name in (results_file, *PLOT_FILES)]
    for path in out_dir.glob("*.json"):  # any script's results, and the weights they name
        results = load_results(path)
        if isinstance(results, dict):
            found.append(path)
            found += [out_dir / entry["weights"] for entry in results["configs"]
                      if isinstance(entry.get("weights"), str)
                      and Path(entry["weights"]).name == entry["weights"]]
    found += [path for path in out_dir.glob("*.pth") if weights.fullmatch(path.name)]
    found += [path for path in (out_dir / "checkpoints").glob("*.ckpt")
              if CHECKPOINT_NAME.fullmatch(path.name)]
    return sorted({path for path in found if path.is_file()})


TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # write_atomically's, cut short by a kill


def remove_temporaries(out_dir):
    """Delete what writes cut short by kill -9 or a power cut left behind (a ResNet
    checkpoint's is 90 MB): files named as only write_atomically names them."""
    for folder in (Path(out_dir), Path(out_dir) / "checkpoints"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else []:
            if TEMPORARY.fullmatch(path.name) and path.is_file():
                path.unlink()


def config_files(out_dir, label, weights_pattern):
    """The weights (every seed) and checkpoints of one config (``label``: config_N)."""
    out_dir = Path(out_dir)
    weights = _weights_regex(weights_pattern, int(label.split("_")[1]))
    return sorted([path for path in out_dir.glob("*.pth") if weights.fullmatch(path.name)]
                  + [path for path in (out_dir / "checkpoints").glob(f"{label}_seed*.ckpt")
                     if CHECKPOINT_NAME.fullmatch(path.name)])


JOURNAL = ".relabel.json"  # a renaming in progress (see rename_with_results)


def rename_with_results(out_dir, moves, results, results_file):
    """Rename files (``moves``: [(source, target)] inside ``out_dir``) and write ``results``
    as one step. A crash at any moment leaves the old names with the old results JSON or the
    new names with the new one: finish_renaming(), at the start of the next run, completes or
    undoes it, deciding by whether the results JSON was already written (its "renaming"
    token), which is the one atomic step."""
    out_dir = Path(out_dir)
    token = secrets.token_hex(8)
    plan = [[str(Path(source).relative_to(out_dir)), str(Path(target).relative_to(out_dir))]
            for source, target in moves]
    save_json({"token": token, "moves": plan}, out_dir / JOURNAL)
    staging = out_dir / ".relabel"
    staging.mkdir(exist_ok=True)
    for source, target in plan:  # out of the way first: the targets may be other sources
        os.replace(out_dir / source, staging / target.replace("/", "__"))
    save_json(dict(results, renaming=token), out_dir / results_file)
    finish_renaming(out_dir, results_file)


def finish_renaming(out_dir, results_file):
    """Complete (or undo) a rename_with_results() that a crash interrupted; a no-op else."""
    out_dir = Path(out_dir)
    try:
        journal = json.loads((out_dir / JOURNAL).read_text())
    except (OSError, ValueError):
        return
    try:  # the token alone decides, whatever else the JSON holds
        done = json.loads((out_dir / results_file).read_text()).get("renaming") \
            == journal["token"]
    except (OSError, ValueError, AttributeError):
        done = False
    staging = out_dir / ".relabel"
    for source, target in journal["moves"]:
        staged = staging / target.replace("/", "__")
        if staged.exists():
            destination = out_dir / (target if done else source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, destination)
    (out_dir / JOURNAL).unlink()
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()


def move_aside(out_dir, paths):
    """Move ``paths`` (files in ``out_dir`` or its checkpoints/) into a new time-stamped
    subfolder, keeping their relative places; return the subfolder."""
    out_dir = Path(out_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = out_dir / f"{EARLIER_PREFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = out_dir / f"{EARLIER_PREFIX}{stamp}-{suffix}"
    for path in paths:
        destination = target / Path(path).relative_to(out_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir() and not checkpoints.is_symlink() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    return target


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
    try:
        results = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
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
    write_atomically(path, lambda file: torch.save(state, file))


def save_json(data, path):
    text = json.dumps(data, indent=2) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def environment():
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "platform": platform.platform()}


def new_results(script, dataset, runtime, seed, argv):
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
                 "fingerprint": data_fingerprint(dataset)},
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
