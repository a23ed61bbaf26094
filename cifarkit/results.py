"""The results JSON and run record (run.json): schema, writing, reading, checks and summaries,
for the engine, make_report.py and predict.py. No torch, nothing that draws: the report runs
where neither is installed. Written to a temporary name, then renamed: no half-written file."""
import json
import math
import os
import re
import secrets
import stat
from pathlib import Path

import numpy as np

# CIFAR-10's classes in label order (0..9), as the results name them.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PLOT_FILES = ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png")
NAMING_KEYS = ("name", "reported_accuracy", "reported_seconds")  # label a config: train nothing
STATUSES = ("finished", "diverged", "out_of_memory", "running")
RECORD_FORMAT = "cifarkit-run-1"
# A folder holding any of these is somebody's project, not a place for results.
FOREIGN_MARKERS = (".git", ".hg", ".svn", "pyproject.toml", "setup.py")
SOURCE_SUFFIXES = (".py", ".ipynb")

# The schema, (key, kind, required) per part: a damaged file is refused by name before any use.
NUMBER, NULLABLE, ABSENT = (int, float), (int, float, type(None)), object()
KINDS = {dict: "an object", list: "a list", str: "a string", NUMBER: "a number",
         int: "a whole number", NULLABLE: "a number or null"}
HEADER = (("script", str, True), ("started", str, True), ("seed", int, True),
          ("configs", list, True), ("devices", list, True), ("data", dict, True),
          ("world_size", int, False), ("command", str, False), ("weights_file", str, False))
DATA = (("source", str, True), ("train_images", int, True), ("test_images", int, True))
ENTRY = (("id", str, True), ("seed", int, True), ("config", dict, True), ("status", str, True),
         ("history", list, True), ("run", str, True), ("precision", str, False))
CONFIG = (("lr", NUMBER, True), ("momentum", NUMBER, True), ("batch_size", NUMBER, True))
NAMING = (("name", str, False), ("reported_accuracy", NUMBER, False),
          ("reported_seconds", NUMBER, False))
EPOCH = (("epoch", int, True), ("seconds", NUMBER, True), ("train_loss", NUMBER, True),
         ("train_accuracy", NUMBER, True),
         ("test_accuracy", NULLABLE, False), ("train_accuracy_eval", NULLABLE, True))
DIVERGED = (("diverged_at", dict, True),)
WHERE = (("epoch", int, True), ("step", int, True))
BATCH = WHERE[:1] + (("batch", int, True), ("loss", NUMBER, True))  # a log_every point
FINISHED = tuple((key, NUMBER, True) for key in ("final_test_accuracy", "best_test_accuracy",
                                                 "final_train_accuracy", "train_seconds"))
RECORD = (("format", str, True), ("identity", dict, True), ("config", dict, True),
          ("status", str, True), ("seed", int, True), ("history", list, True),
          ("created", NUMBER, True))


def wrong_field(record, fields):
    """The first of ``fields`` that ``record`` lacks (if required) or holds as another kind, in
    words, or None. true and false are not numbers here, though Python counts them as ints."""
    for key, kind, required in fields:
        value = record.get(key, ABSENT)
        if (required or key in record) and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"'{key}' is {'missing or not' if required else 'not'} {KINDS[kind]}"
    return None


def check_results(results):
    """(why ``results`` is unusable or None, [naming fields of the wrong kind, dropped])."""
    if not isinstance(results, dict):
        return f"not a results file (it holds {KINDS.get(type(results), 'a value')})", []
    problem = wrong_field(results, HEADER) or wrong_field(results["data"], DATA)
    if problem or not all(isinstance(device, str) for device in results["devices"]):
        return problem or "'devices' is not a list of names", []
    if results.get("world_size", 1) < 1:
        return "'world_size' is less than 1", []
    if not re.fullmatch(r"[\w+-]*(\{number\})?[\w+-]*\.pth", results.get("weights_file", ".pth")):
        return (f"'weights_file' is {results['weights_file']!r}, not a name like "
                f"config_{{number}}.pth"), []
    dropped = []
    for number, entry in enumerate(results["configs"], start=1):
        problem = _entry_problem(entry)
        if problem:
            return f"configs entry {number}: {problem}", []
        for key, kind, required in NAMING:  # a label of the wrong kind is dropped, not fatal
            why = wrong_field(entry["config"], [(key, kind, required)])
            if why:
                del entry["config"][key]
                dropped.append(f"configs entry {number}: its config: {why}")
    return _grouping_problem(results["configs"]), dropped


def _entry_problem(entry):
    if not isinstance(entry, dict):
        return "not an object"
    problem = wrong_field(entry, ENTRY)
    if problem or not re.fullmatch(r"config_\d+", entry["id"]):  # figures colour by N
        return problem or f"'id' is {entry['id']!r}, not config_N"
    if not re.fullmatch(r"runs/[^/]+", entry["run"]) or entry["run"] in ("runs/.", "runs/.."):
        return f"'run' is {entry['run']!r}, not runs/<a run's folder>"
    if entry["status"] not in STATUSES:
        return f"'status' is {entry['status']!r}, not one of {', '.join(STATUSES)}"
    problem = wrong_field(entry["config"], CONFIG) or next(
        (f"'{key}' is {KINDS[type(value)]}, not a single value" for key, value in
         entry["config"].items() if isinstance(value, (dict, list)) and key not in NAMING_KEYS),
        None)
    if problem:
        return f"its config: {problem}"
    for epoch, record in enumerate(entry["history"], start=1):
        problem = wrong_field(record, EPOCH) if isinstance(record, dict) else "not an object"
        if problem:
            return f"history record {epoch}: {problem}"
    batches = entry.get("batch_losses", [])
    if not (isinstance(batches, list) and all(isinstance(point, dict) and not wrong_field(
            point, BATCH) for point in batches)) or batches and (wrong_field(
            entry, [("steps_per_epoch", int, True)]) or entry["steps_per_epoch"] < 1):
        return "'batch_losses' is not a list of {epoch, batch, loss} with 'steps_per_epoch'"
    if entry["status"] == "diverged":
        return wrong_field(entry, DIVERGED) or wrong_field(entry["diverged_at"], WHERE)
    if entry["status"] != "finished":
        return None
    if not entry["history"]:
        return "finished, but its 'history' holds no epoch"
    problem = wrong_field(entry, FINISHED) or next(
        (f"'{key}' is not a finite number" for key, _, _ in FINISHED
         if not math.isfinite(entry[key])), None) or wrong_field(  # the gap's
        entry["history"][-1], [("train_accuracy_eval", NUMBER, True)])
    if problem:
        return problem
    size, matrix = len(CLASSES), entry.get("confusion_matrix")
    if not (isinstance(matrix, list) and len(matrix) == size and all(
            isinstance(row, list) and len(row) == size
            and all(isinstance(count, NUMBER) for count in row) for row in matrix)):
        return f"'confusion_matrix' is not {size} rows of {size} counts"
    per_class = entry.get("per_class_accuracy")
    if not (isinstance(per_class, dict)
            and all(isinstance(value, NUMBER) for value in per_class.values())):
        return "'per_class_accuracy' is missing or not an object of numbers"
    return None


def _grouping_problem(entries):
    """Why ``entries`` are not configs over seeds, or None: a config is averaged over the
    entries of its id, so each (id, seed) appears once, and an id holds one config and model."""
    first, seen = {}, {}
    for number, entry in enumerate(entries, start=1):
        run = (entry["id"], entry["seed"])
        if run in seen:
            return (f"configs entries {seen[run]} and {number} are both {entry['id']} seed "
                    f"{entry['seed']}: a config's result for one seed must appear once")
        seen[run], other = number, first.setdefault(entry["id"], entry)
        configs = (other["config"], entry["config"])
        keys = [key for key in {**configs[0], **configs[1]} if key not in NAMING_KEYS
                and configs[0].get(key, "(absent)") != configs[1].get(key, "(absent)")]
        change = "; ".join(f"seed {one['seed']}: " + ", ".join(
            f"{key}={config.get(key, '(absent)')}" for key in keys)
            for one, config in zip((other, entry), configs)) if keys else None
        if not change and None not in (other.get("model"), entry.get("model")) \
                and other["model"] != entry["model"]:
            change = f"seeds {other['seed']} and {entry['seed']} record different models"
        if change:
            return (f"{entry['id']} holds different configs under one id ({change}): the "
                    f"report would average them as one config; give one of them its own "
                    f"folder or config id")
    return None


def check_record(record):
    """What makes a run record (run.json) unusable, in words, or None: what its results entry
    (its view) could not be, too."""
    if not isinstance(record, dict):
        return "not a run record"
    problem = wrong_field(record, RECORD)
    if problem or record["format"] != RECORD_FORMAT:
        return problem or f"'format' is {record['format']!r}, not {RECORD_FORMAT!r}"
    return _entry_problem(dict(record, id=record.get("label"), run="runs/its-folder"))


def read_json(path):
    """(the JSON at ``path``, None) or (None, why it cannot be read, in words). Only a regular
    file is read, opened without blocking: a named pipe would wait for a writer for ever."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return None, "not a regular file (a named pipe, a device or a folder)"
            with open(descriptor, "rb", closefd=False) as file:
                return json.loads(file.read().decode("utf-8")), None
        finally:
            os.close(descriptor)
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except ValueError as error:  # UnicodeDecodeError included
        return None, f"not valid JSON ({error})"
    except RecursionError:  # json's answer to arrays nested thousands deep
        return None, "not valid JSON (nested too deeply to read)"


def read_results(path):
    """(results, None, [naming fields dropped, in words]) or (None, why it is unusable, [])."""
    results, problem = read_json(path)
    problem, dropped = (problem, []) if problem else check_results(results)
    return (None, problem, []) if problem else (results, None, dropped)


def load_results(path):
    """The results JSON at ``path``: a dict, None if absent, "unreadable" (edited by hand, say)."""
    results, problem, _ = read_results(path)
    return ("unreadable" if Path(path).exists() else None) if problem else results


def foreign_entries(folder):
    """The names in ``folder`` that make it somebody's project, sorted."""
    return sorted(entry.name for entry in Path(folder).iterdir()
                  if entry.name in FOREIGN_MARKERS or entry.suffix in SOURCE_SUFFIXES)


def write_atomically(path, write):
    """Call ``write(file_object)`` on a temporary file, then rename it to ``path``. Mode 0o666
    less the umask, as any new file (tempfile's 0o600 would hide it from colleagues)."""
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
    entry.update({key: progress[key] for key in ("diverged_at", "batch_losses") if progress[key]})
    return entry


def settings(config):
    return ", ".join(f"{key}={value}" for key, value in config.items() if key not in NAMING_KEYS)


def config_label(entry):
    name = f" {entry['config']['name']}" if "name" in entry["config"] else ""
    return f"{entry['id']}{name}: {settings(entry['config'])}"


def group_runs(entries):
    """{config id: [entries, one per seed]}, in config order."""
    groups = {}
    for entry in entries:
        groups.setdefault(entry["id"], []).append(entry)
    return groups


def duration(seconds):
    """'0.42 s', '4.2 s', '42 s', '7.5 min', '11.8 h'."""
    if seconds < 120:
        return f"{seconds:.{2 if seconds < 1 else 1 if seconds < 10 else 0}f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def mean_std(values):
    """'m ± s' of a list of numbers (just 'm' for one)."""
    array = np.asarray(values, dtype=float)
    if len(array) == 1:
        return f"{array[0]:.2f}"
    return f"{array.mean():.2f} ± {array.std(ddof=1):.2f}"


def outcome(entry):
    if entry["status"] == "diverged":
        where = entry["diverged_at"]
        return f"DIVERGED at epoch {where['epoch']}, step {where['step']}"
    if entry["status"] != "finished":
        return entry["status"].upper().replace("_", " ")
    return (f"final test accuracy {entry['final_test_accuracy']:.2f}% "
            f"(best {entry['best_test_accuracy']:.2f}%)")


def summary(entries):
    """The closing block the report's logs showed: a config per entry, mean ± std over seeds."""
    lines = ["Training completed. Results summary:"]
    for runs in group_runs(entries).values():
        finished = [run for run in runs if run["status"] == "finished"]
        if len(runs) == 1:
            said = f"{outcome(runs[0])}, training time {runs[0]['train_seconds']:.2f} s"
        else:
            said = f"{len(runs)} seeds" + (
                f": final test accuracy {mean_std([r['final_test_accuracy'] for r in finished])}"
                f"% (mean ± std over {len(finished)}), training time "
                f"{mean_std([r['train_seconds'] for r in finished])} s" if finished else "")
            said += "".join(f"; seed {run['seed']} {outcome(run)}" for run in runs
                            if run not in finished)
        lines += [f"  {config_label(runs[0])}", f"      {said}"]
    return "\n".join(lines)
