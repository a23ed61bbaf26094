"""Everything a run leaves behind: weights, the results JSON, the PNGs, the printed summary.

Every file is written to a temporary name in the same folder and then renamed over the
target, so a crash mid-write never leaves a half-written result.
"""
import json
import os
import platform
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from .errors import UserError
from .runtime import device_names

EARLIER_PREFIX = "earlier-"  # subfolders holding results that a later run moved aside
PLOTS = (  # file, history key, y-axis label
    ("loss.png", "train_loss", "training loss (cross-entropy, mean per image)"),
    ("train_accuracy.png", "train_accuracy", "training accuracy (%)"),
    ("test_accuracy.png", "test_accuracy", "test accuracy (%)"),
)


def check_out_dir(path, bytes_needed):
    """Refuse an output folder that cannot be created or written, without touching it."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: cannot write there ({existing} is not a writable "
                        f"folder). Choose another folder with --out DIR.")
    free = shutil.disk_usage(existing).free
    if free < bytes_needed:
        raise UserError(f"--out {path}: only {free / 2**20:.0f} MiB free on that disk; this run "
                        f"needs about {bytes_needed / 2**20:.0f} MiB. Free some space or "
                        f"choose another folder with --out DIR.")


def has_results(out_dir):
    return any(not entry.name.startswith(EARLIER_PREFIX) for entry in Path(out_dir).iterdir())


def move_aside(out_dir):
    """Move everything in ``out_dir`` (but earlier copies) into a time-stamped subfolder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = Path(out_dir) / f"{EARLIER_PREFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = Path(out_dir) / f"{EARLIER_PREFIX}{stamp}-{suffix}"
    target.mkdir()
    for entry in list(Path(out_dir).iterdir()):
        if not entry.name.startswith(EARLIER_PREFIX):
            os.replace(entry, target / entry.name)
    return target


def load_results(path):
    """The results JSON at ``path``: a dict, None when absent, "unreadable" when broken."""
    try:
        results = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unreadable"
    return results if isinstance(results, dict) else "unreadable"


def prepare_out_dir(path):
    """Create the output folder and prove it is writable, before any training starts."""
    out_dir = Path(path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(f"--out {out_dir}: cannot write there ({error.strerror or error}). "
                        f"Choose another folder with --out DIR.") from None
    return out_dir


def write_atomically(path, write):
    """Call ``write(file_object)`` on a temporary file, then rename it to ``path``."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_weights(model, path):
    """A plain state_dict of the unwrapped model: loads with torch.load(weights_only=True)."""
    write_atomically(path, lambda file: torch.save(model.state_dict(), file))


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
                 "test_images": len(dataset.test_labels)},
        "seed": seed,
        "versions": environment(),
        "accuracy_unit": "percent",
        "configs": [],
    }


def settings(config):
    return ", ".join(f"{key}={value}" for key, value in config.items() if key != "name")


def config_label(entry):
    name = f" {entry['config']['name']}" if "name" in entry["config"] else ""
    return f"{entry['id']}{name}: {settings(entry['config'])}"


def config_entry(label, config, status, progress, weights_name):
    """One config's record in the results JSON."""
    history = progress["history"]
    entry = {"id": label, "config": config, "status": status, "history": history,
             "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
             "best_test_accuracy": max((r["test_accuracy"] for r in history), default=None),
             "best_epoch": max(history, key=lambda r: r["test_accuracy"])["epoch"]
             if history else None,
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


def plot_histories(entries, out_dir, title, plots=PLOTS):
    """loss.png, train_accuracy.png, test_accuracy.png: one labelled curve per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for file_name, key, y_label in plots:
        figure, axes = plt.subplots(figsize=(9, 5.5))
        for entry in entries:
            epochs = [record["epoch"] for record in entry["history"]]
            values = [record[key] for record in entry["history"]]
            axes.plot(epochs, values, marker="o" if len(epochs) < 30 else None,
                      label=config_label(entry))
        axes.set(title=f"{title}: {y_label.split(' (')[0]}", xlabel="epoch", ylabel=y_label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="best")
        figure.tight_layout()
        write_atomically(out_dir / file_name,
                          lambda file: figure.savefig(file, format="png", dpi=110))
        plt.close(figure)


def plot_batch_losses(entries, out_dir, title, log_every):
    """The baseline's loss.png: the loss printed every ``log_every`` mini-batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    for entry in entries:
        points = entry.get("batch_losses", [])
        steps_per_epoch = entry["steps_per_epoch"]
        x = [point["epoch"] - 1 + point["batch"] / steps_per_epoch for point in points]
        axes.plot(x, [point["loss"] for point in points], marker="o", label=config_label(entry))
    axes.set(title=f"{title}: loss every {log_every} mini-batches", xlabel="epoch",
             ylabel=f"training loss (mean of {log_every} mini-batches)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    write_atomically(out_dir / "loss.png",
                      lambda file: figure.savefig(file, format="png", dpi=110))
    plt.close(figure)


def plot_run(entries, out_dir, script, log_every):
    """Every PNG of a run; the baseline's loss.png shows its running loss instead."""
    title = Path(script).stem
    if log_every and any(entry.get("batch_losses") for entry in entries):
        plot_histories(entries, out_dir, title, PLOTS[1:])
        plot_batch_losses(entries, out_dir, title, log_every)
    else:
        plot_histories(entries, out_dir, title)


def summary(entries):
    """The report's closing block, as text."""
    lines = ["Training completed. Results summary:"]
    for entry in entries:
        lines.append(f"  {config_label(entry)}")
        lines.append(f"      {outcome(entry)}, training time {entry['train_seconds']:.2f} s")
    return "\n".join(lines)
