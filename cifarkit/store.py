"""The run store: one folder per trained (config, seed), written once, never moved; once its
record says "finished" or "diverged", nothing rewrites or deletes it.

    OUT/runs/config_2-l2-s0-20261206-101500-3f9a/
        run.json          the record: the config as trained, its identity, history, outcome
        weights.pth       the final weights (a finished run)
        predictions.npz   the final test predictions and the example images (a finished run)
        checkpoint.ckpt   while it trains: where a stopped run carries on

OUT's named files (config_N.pth, the results JSON, the PNGs) are views of the runs CONFIGS
selects, rebuilt by every command. No torch: make_report.py runs without it."""
import contextlib
import hashlib
import os
import re
import secrets
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import UserError
from .results import (NAMING_KEYS, RECORD_FORMAT, check_record, load_results, read_json,
                      save_json, write_atomically)

try:
    import fcntl
except ImportError:  # Windows: no locks; one writer per folder is then up to the user
    fcntl = None

RUNS, RECORD, WEIGHTS, PREDICTIONS, CHECKPOINT = (
    "runs", "run.json", "weights.pth", "predictions.npz", "checkpoint.ckpt")
ENDED = ("finished", "diverged")
# What the results JSON's header holds; the rest of a run record is its entry.
HEADER_KEYS = ("script", "command", "started", "devices", "world_size", "backend", "data",
               "versions", "accuracy_unit", "log_every", "weights_file")
TOLERANCE = dict(rtol=1e-3, atol=1e-5)  # the model's probe, across machines and BLAS builds
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # write_atomically's, cut short by a kill


def config_identity(config, neutral):
    """What a config trains: no naming keys, none at ``neutral`` (so new keys change nothing)."""
    return {key: value for key, value in sorted(config.items())
            if key not in NAMING_KEYS and not (key in neutral and neutral[key] == value)}


def identity(script, config, neutral, seed, data, precision, model):
    """What must match for a run to count as ``config`` trained with ``seed`` now (``neutral``
    kept: the values its absent keys stood for, should a script change a default later)."""
    return {"script": script, "config": config_identity(config, neutral), "seed": seed,
            "data": {key: data.get(key) for key in ("fingerprint", "train_images",  # not the path
                                                    "test_images", "normalization")},
            "precision": precision, "model": model, "neutral": neutral}


def trained_config(recorded):
    """The config an identity says its run trained, its absent keys at their values then."""
    return dict(recorded.get("neutral") or {}, **(recorded.get("config") or {}))


def same_model(recorded, model):
    """Whether ``recorded`` is the model built now."""
    try:
        return (recorded["shapes"] == model["shapes"]
                and all(len(recorded[key]) == len(model[key])
                        and np.allclose(recorded[key], model[key], **TOLERANCE)
                        for key in ("init", "probe")))
    except (KeyError, TypeError, ValueError):
        return False


def matches(record, wanted, neutral):
    """Whether run ``record`` is the run of identity ``wanted``."""
    recorded = record.get("identity")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("config"), dict):
        return False
    return (config_identity(trained_config(recorded), neutral) == wanted["config"]
            and all(recorded.get(key) == wanted[key]
                    for key in ("script", "seed", "data", "precision"))
            and same_model(recorded.get("model"), wanted["model"]))


def describe_change(before, after, neutral=None):
    """"lr 0.01 -> 0.02, nesterov False -> True" (an absent key shows its ``neutral`` value)."""
    changes, neutral = [], neutral or {}
    for key in list(before) + [key for key in after if key not in before]:
        old, new = (config.get(key, neutral.get(key, "(unset)")) for config in (before, after))
        if old != new:
            changes.append(f"{key} {old!r} -> {new!r}")
    return ", ".join(changes)


def what_differs(earlier, now, neutral=None):
    """Why run record ``earlier`` is not the run of identity ``now``, in words."""
    was = earlier.get("identity") or {}
    parts = [describe_change(config_identity(trained_config(was), neutral or {}),
                             now["config"], neutral),
             describe_change(*({key: ids.get(key) for key in ("seed", "precision")}
                               for ids in (was, now)))]
    if was.get("data") != now["data"]:
        sizes = [{key: data[key] for key in data if key != "fingerprint"}
                 for data in (was.get("data") or {}, now["data"])]
        parts.append(f"the data ({describe_change(*sizes) or 'other images, as many'})")
    if not same_model(was.get("model"), now["model"]):
        parts.append("the model")
    return ", ".join(part for part in parts if part) or "nothing"


def lock(folder, blocking):
    """A descriptor locking ``folder`` (close it to let go), or None when another process holds
    it and not ``blocking``. flock dies with its process: a kill -9 leaves nothing behind."""
    if fcntl is None:  # a handle to close all the same
        return os.open(os.devnull, os.O_RDONLY)
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # never a pipe
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(handle)
        return None
    return handle


@contextlib.contextmanager
def store_lock(out, create=False):
    """Held while runs are chosen or created and views rebuilt: moments, not a training.
    ``create`` (at a run's start): make the folder; later, one moved away is not made again."""
    folder = Path(out) / RUNS
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot write there ({error.strerror or error}). "
                        f"Choose another folder with --out DIR.") from None
    handle = lock(folder, blocking=True)  # FileNotFoundError where the folder has gone
    try:
        yield
    finally:
        os.close(handle)


def read_record(run_dir):
    """A run's record, or None (a kill before the first record was written, or damaged by hand)."""
    record, _ = read_json(Path(run_dir) / RECORD)  # (None, why) when it cannot be read
    return record if check_record(record) is None else None


def runs(out):
    """{run folder: record} of every readable run in ``out``'s store, oldest first."""
    folder = Path(out) / RUNS
    found = {run_dir: record for run_dir in (folder.iterdir() if folder.is_dir() else ())
             if not run_dir.name.startswith(".") and run_dir.is_dir()
             and (record := read_record(run_dir)) is not None}
    return dict(sorted(found.items(), key=lambda item: (item[1]["created"], item[0].name)))


def usable(run_dir, record):
    """Whether a run counts as done: diverged, or finished with its weights as written."""
    weights = Path(run_dir) / WEIGHTS
    return record["status"] == "diverged" or (
        record["status"] == "finished" and weights.is_file()
        and record.get("weights_sha256") in (None, sha256(weights)))


def remove_temporaries(out):
    """Delete killed writes' temporaries in OUT (under store_lock) and in run folders none holds,
    and a run folder left empty (a kill between its creation and its first record)."""
    for folder in [Path(out)] + sorted((Path(out) / RUNS).glob("[!.]*")):
        if folder.is_symlink() or not folder.is_dir():  # never outside OUT, never a pipe
            continue
        held = lock(folder, blocking=False) if folder != Path(out) else None
        if folder != Path(out) and held is None:
            continue
        try:
            for path in folder.iterdir():
                if TEMPORARY.fullmatch(path.name) and path.is_file():
                    path.unlink()
            if held is not None:
                with contextlib.suppress(OSError):  # only an empty folder goes
                    folder.rmdir()
        finally:
            if held is not None:
                os.close(held)


def tidy(run_dir, record):
    """A finished run's checkpoint that a kill left (between the record and its removal)."""
    if record["status"] in ENDED:
        (Path(run_dir) / CHECKPOINT).unlink(missing_ok=True)


def new_run(out, label, config, seed, header, wanted):
    """A run's folder with its first record, under store_lock (no run is created twice)."""
    name = re.sub(r"[^\w.+-]+", "_", config.get("name", ""))[:40]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) / RUNS / "-".join(
        part for part in (label, name, f"s{seed}", stamp, secrets.token_hex(2)) if part)
    run_dir.mkdir()
    save_json(dict(header, format=RECORD_FORMAT, created=time.time(), label=label,
                   identity=wanted, config=config, seed=seed, status="running", history=[],
                   weights=None), run_dir / RECORD)
    return run_dir


_DIGESTS = {}  # (path, inode, size, mtime) -> sha256: views are compared every epoch


def sha256(path):
    stat = os.stat(path)
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def save_predictions(run_dir, predictions, test_labels, pick, images):
    """The final test predictions, the labels, and the example images examples.png shows."""
    write_atomically(Path(run_dir) / PREDICTIONS, lambda file: np.savez(
        file, predictions=np.asarray(predictions, dtype=np.int16),
        labels=np.asarray(test_labels, dtype=np.int16), pick=np.asarray(pick),
        images=np.asarray(images, dtype=np.uint8)))


def weights_name(pattern, number, seed, base_seed):
    """config_N.pth, config_N_seedS.pth for extra seeds; a pattern without {number} (the
    baseline's model.pth) gives model.pth for config 1 and model_config_N.pth for others."""
    if "{number}" in pattern:
        stem = pattern.format(number=number)[:-len(".pth")]
    else:
        stem = pattern[:-len(".pth")] + ("" if number == 1 else f"_config_{number}")
    return f"{stem}.pth" if seed == base_seed else f"{stem}_seed{seed}.pth"


def _is_view(path, run_weights):
    """Whether the file at ``path`` holds one of the runs' weights ([(weights, sha256)])."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    digests = [digest or sha256(weights) for weights, digest in run_weights
               if os.path.isfile(weights) and os.stat(weights).st_size == size]
    return bool(digests) and sha256(path) in digests


def write_views(out, results_file, weights_file, header, shown, draw, every):
    """Rebuild, under store_lock, the views in ``out``: the weights files, the results JSON
    (``header`` and ``shown``: [(label, config, run folder, record)]) and ``draw(results)``'s
    PNGs. ``every``: runs(out). Returns the lines that say what could not be a view."""
    out = Path(out)
    run_weights = [(run_dir / WEIGHTS, record.get("weights_sha256"))
                   for run_dir, record in every.items() if record["status"] == "finished"]
    lines, entries, wanted = [], [], {}
    for label, config, run_dir, record in shown:
        view = None
        if record["status"] == "finished" and (run_dir / WEIGHTS).is_file():
            view = weights_name(weights_file, int(label.split("_")[1]), record["seed"],
                                header["seed"])
            if os.path.lexists(out / view) and not _is_view(out / view, run_weights):
                lines.append(f"{out / view} is not the weights of any run in {out / RUNS}/ (a "
                             f"file of your own?): left as it is, so {label}'s weights are "
                             f"only in {run_dir / WEIGHTS}")
                view = str((run_dir / WEIGHTS).relative_to(out))
            else:
                wanted[view] = run_dir / WEIGHTS
        entry = {key: value for key, value in record.items()
                 if key not in HEADER_KEYS + ("format", "identity", "label", "created")}
        entries.append(dict(entry, id=label, config=config, run=str(run_dir.relative_to(out)),
                            weights=view if record["status"] == "finished" else None))
    for name, source in wanted.items():
        with contextlib.suppress(OSError):  # none there, or unreadable: written anew
            if not os.path.samefile(source, out / name) and sha256(out / name) == sha256(source):
                continue
        # a copy, never a link: saving over config_N.pth must not reach a run
        with open(source, "rb") as original:
            write_atomically(out / name, lambda file: file.write(original.read()))
    stem = re.escape(weights_file[:-len(".pth")])
    stem = (stem.replace(re.escape("{number}"), r"\d+") if "{number}" in weights_file
            else stem + r"(_config_\d+)?")
    for stale in sorted(out.iterdir()):  # views of runs no config shows any more
        if (re.fullmatch(stem + r"(_seed\d+)?\.pth", stale.name) and stale.name not in wanted
                and stale.is_file() and _is_view(stale, run_weights)):
            stale.unlink()
    results = dict(header, configs=sorted(entries, key=lambda e: (int(e["id"].split("_")[1]),
                                                                  e["seed"])))
    old = load_results(out / results_file)
    if old == "unreadable":  # edited by hand? kept, not lost
        kept = out / f"{results_file}.unreadable-{datetime.now():%Y%m%d-%H%M%S-%f}"
        os.replace(out / results_file, kept)
        lines.append(f"{out / results_file} could not be read (edited by hand?): kept as "
                     f"{kept.name}, and written anew from the runs")
    if not (isinstance(old, dict) and all(old.get(key) == results.get(key) for key in (
            "configs", "devices", "data", "seed", "precision", "script"))):
        save_json(results, out / results_file)  # else as it was: the PNGs can tell they show it
    return lines + (draw(results) or [])


def rebuild_views(out, results_file):
    """make_report.py's views: of the runs the results JSON names (it has no CONFIGS)."""
    from .plots import draw_views  # matplotlib only where views are drawn

    out = Path(out)
    results = load_results(out / results_file)
    if not isinstance(results, dict) or "weights_file" not in results:
        return []
    shown, lines, every = [], [], runs(out)
    for shown_entry in results["configs"]:
        run = shown_entry["run"]
        record = read_record(out / run)
        if shown_entry["history"] and (record is None or record["label"] != shown_entry["id"]):
            for folder, found in every.items():  # its folder renamed by hand: the run of its
                if (found["seed"], found["history"]) == (shown_entry["seed"],  # seed and history
                                                         shown_entry["history"]):
                    record, run = found, str(folder.relative_to(out))
                    break
        if record is None:
            lines.append(f"{shown_entry['id']}: its run {run} is gone or its run.json cannot "
                         f"be read (deleted or edited by hand?): left out of the views until "
                         f"the script trains it again")
            continue
        config, trained = shown_entry["config"], config_identity(record["config"], {})
        if any(config.get(key, "(absent)") != value for key, value in trained.items()):
            lines.append(f"{shown_entry['id']}: its config in {results_file} is not the one its "
                         f"run {run} trained (edited by hand?): shown as trained")
            config = dict(trained, **{key: value for key, value in config.items()
                                      if key in NAMING_KEYS})
        shown.append((shown_entry["id"], config, out / run, record))
    header = {key: value for key, value in results.items() if key != "configs"}
    lines += write_views(out, results_file, results["weights_file"], header, shown,
                         lambda new: draw_views(out, new, examples(out, new)), every)
    return lines


def examples(out, results):
    """(images, labels, predictions, entry) for examples.png from the best finished entry."""
    finished = [entry for entry in results["configs"] if entry["status"] == "finished"
                and (Path(out) / entry["run"] / PREDICTIONS).is_file()]
    if not finished:
        return None
    best = max(finished, key=lambda entry: entry["final_test_accuracy"])
    try:
        with np.load(Path(out) / best["run"] / PREDICTIONS) as saved:
            pick = saved["pick"]
            return saved["images"], saved["labels"][pick], saved["predictions"][pick], best
    except (OSError, ValueError, KeyError):
        return None


def pre_store(out, results_file):
    """Why ``out`` holds a kit's results from before the run store, or None: they are not read."""
    out = Path(out)
    results, _ = read_json(out / results_file)
    found = [path.name for path in sorted(out.glob(".ledger*"))]  # a move's journal and files
    if not (out / RUNS).is_dir() and isinstance(results, dict) and isinstance(
            results.get("configs"), list) and any(isinstance(entry, dict) and "run" not in entry
                                                  for entry in results["configs"]):
        found.insert(0, f"{results_file} naming no runs")
    if not found:
        return None
    return (f"written by a version of the kit before the run store ({', '.join(found[:3])}), "
            f"which this version does not read")
