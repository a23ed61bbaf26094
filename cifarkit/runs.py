"""The training side of the run store (store.py): a run's identity, which run each (config,
seed) trains in or shows, its record as it trains, and the views of the runs CONFIGS selects."""
import contextlib
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import data, outputs, plots, runtime as rt, store
from .errors import UserError
from .results import PLOT_FILES, config_entry, load_results, save_json

# Between epochs, the PNGs wait this many times their drawing time: at most ~1/this of a run.
REFRESH_RATIO = 20


@dataclass
class Job:
    """What every config of one run of a script shares."""
    runtime: rt.Runtime
    out: Path
    script: object             # the train.Script: its model, names, log_every...
    argv: list                 # the flags it ran with (for the command that resumes it)
    configs: dict              # config id -> the checked config, for every config of CONFIGS
    models: dict               # config id -> model_identity of its model
    neutral: dict              # key -> the value that trains as if the key were absent
    header: dict               # the results JSON's run-level fields (outputs.new_results)
    restart: bool              # --restart: each selected (config, seed) trains a new run
    say: Callable              # print on rank 0, nothing elsewhere
    results: dict = None       # the results JSON as last written (rank 0)
    on_device: data.OnDevice = None  # set once the data is on the device
    epochs_to_train: tuple = (0, 0)  # (runs, epochs) left, for the estimate
    estimate_due: bool = True  # the first config trained prints the time estimate
    drawn_at: float = 0.0      # when the PNGs were last drawn (time.monotonic)...
    drawing: float = 0.0       # ...and how long that took
    locks: dict = field(default_factory=dict)  # run folder -> its lock, while it trains
    said: set = field(default_factory=set)     # the view lines said already

    def identity(self, label, seed):
        """What a run must match to be ``label`` trained with ``seed`` here and now."""
        return store.identity(self.header["script"], self.configs[label], self.neutral, seed,
                              self.header["data"], self.header["precision"],
                              self.models[label])


@dataclass
class Training:
    """One config trained with one seed in its run folder."""
    label: str                 # its config id, "config_N"
    name: str                  # as messages name it: the label, with " (seed S)" for extra seeds
    seed: int
    config: dict               # the checked config (with --epochs applied)
    model: torch.nn.Module     # placed: wrapped for DataParallel or DDP where the run uses them
    optimizer: torch.optim.Optimizer
    scheduler: object          # stepped after every batch; None for a constant lr
    scaler: torch.amp.GradScaler  # fp16's loss scaling; disabled in bf16 and fp32
    progress: dict             # train.new_progress(), or its checkpoint's
    steps_per_epoch: int
    run_dir: Path              # its folder in the store
    record: dict               # its run record (rank 0)
    predictions: object = None  # the last test pass's: the final weights' once finished


def model_identity(build_model, chosen, label):
    """``chosen``'s fresh model by what it computes (shapes, initial sums, probe outputs in eval
    and train): comments don't count. Refuses, before training, a model that cannot train: one
    not giving 10 scores, with nothing to train, with lazy layers, failing on a batch."""
    rng = random.getstate(), np.random.get_state()  # built from seed 0 of every generator
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
            model = build_model(chosen)
            if not isinstance(model, torch.nn.Module):
                raise UserError(f"{label}: build_model(config) must return a torch.nn.Module; "
                                f"it returned {type(model).__name__}.")
            state = model.state_dict()
            lazy = [name for name, tensor in state.items()
                    if isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin)]
            if lazy or not any(parameter.requires_grad for parameter in model.parameters()):
                raise UserError(f"{label}: the model " + (
                    f"has lazy layers ({lazy[0]}), whose sizes are known only after a first "
                    f"batch; give them (nn.Linear(400, 120), not nn.LazyLinear(120))." if lazy
                    else "has no parameters to train: SGD would have nothing to change."))
            # laid out as training lays it out (runtime.place_model): a view() fails here
            model.to(memory_format=torch.channels_last)
            probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            probe = probe.contiguous(memory_format=torch.channels_last)
            try:
                with torch.no_grad():
                    scores = [model.eval()(probe)]
                    torch.manual_seed(1)
                    scores.append(model.train()(probe))
            except Exception as error:  # noqa: BLE001 (the student's model: any error is theirs)
                raise UserError(f"{label}: the model fails on a batch of two 3x32x32 images "
                                f"({type(error).__name__}: {str(error).splitlines()[0]})"
                                ) from None
    finally:
        random.setstate(rng[0])
        np.random.set_state(rng[1])
    wrong = next((output for output in scores if not isinstance(output, torch.Tensor)
                  or tuple(output.shape) != (2, 10) or not output.is_floating_point()), None)
    if wrong is not None:
        raise UserError(f"{label}: the model must give 10 scores per image (one per CIFAR-10 "
                        f"class); for a batch of 2 images it gives " + (
                            f"a tensor of shape {tuple(wrong.shape)} ({wrong.dtype})"
                            if isinstance(wrong, torch.Tensor) else f"a {type(wrong).__name__}")
                        + ". Check the last layer (e.g. nn.Linear(84, 10)) and what forward "
                        "returns.")
    shapes = "\n".join(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}"
                       for name, tensor in state.items())
    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    shapes += f"\nfrozen:{','.join(frozen)}" if frozen else ""  # trains differently, same probe
    init = [value for tensor in state.values() if tensor.is_floating_point()
            for value in (float(tensor.double().sum()), float(tensor.double().square().sum()))]
    return {"shapes": hashlib.sha256(shapes.encode()).hexdigest()[:16], "init": init,
            "probe": torch.cat(scores).flatten().double().tolist()}


def kit_names(script, selected, args):
    """The files this run may write in its folder (to find what is in the way first)."""
    return [script.results_file, *PLOT_FILES] + [
        store.weights_name(script.weights_file, number, seed, args.seed)
        for number, _ in selected for seed in range(args.seed, args.seed + args.seeds)]


def open_store(job, selected, seeds):
    """Rank 0: tidy the store, rebuild the views; returns lines on what changed."""
    out, script = job.out, job.script
    if older := store.pre_store(out, script.results_file):  # before store_lock makes runs/
        raise UserError(f"--out {out}: {older}. Its files are left as they are: move the "
                        f"folder aside to keep them, or choose another folder with --out DIR.")
    with store.store_lock(out, create=True):
        store.remove_temporaries(out)
        every, todo = store.runs(out), {}  # todo: what claim() will train, twins once
        for run_dir, record in every.items():
            store.tidy(run_dir, record)
        for number, chosen in selected:
            for seed in range(job.header["seed"], job.header["seed"] + seeds):
                label = f"config_{number}"
                if job.restart:  # all new now: a rerun without it carries on with any not reached
                    run_dir = store.new_run(out, label, chosen, seed, job.header,
                                            job.identity(label, seed))
                    job.locks[run_dir] = store.lock(run_dir, blocking=False)
                    todo[label, seed] = chosen["num_epochs"]
                elif (found := run_for(job, every, label, seed)) is None or \
                        not store.usable(*found):
                    todo[repr(job.identity(label, seed)), seed] = chosen["num_epochs"]
        job.epochs_to_train = (len(todo), sum(todo.values()))
        before = load_results(out / script.results_file)
        lines = refresh(job, final=True, locked=True, drawn=drawn(job, before))
    return lines + changes(job, before, {f"config_{number}" for number, _ in selected})


def changes(job, before, selected):
    """Lines on how the views differ from ``before``: configs relabelled, moved, changed, gone."""
    if not isinstance(before, dict):  # none, or unreadable
        return []
    lines, now = [], {(entry["id"], entry["seed"]): entry for entry in job.results["configs"]}
    where = {entry["run"]: label for (label, _), entry in now.items()}
    showed = {(entry["id"], entry["run"]) for entry in before["configs"]}
    for entry in before["configs"]:
        label, seed, run = entry.get("id"), entry.get("seed"), entry.get("run")
        if seed != job.header["seed"] or not isinstance(run, str):
            continue
        shown = now.get((label, seed))
        if shown and shown["run"] == run:
            was, new = ({key: config[key] for key in store.NAMING_KEYS if key in config}
                        for config in (entry["config"], shown["config"]))
            if was != new:
                lines.append(f"{label}: {store.describe_change(was, new)} (a label: its "
                             f"results are kept)")
        elif shown and entry["history"] and shown["history"] == entry["history"]:
            lines.append(f"{label}: its run {run} is {shown['run']} now (its folder renamed or "
                         f"copied): its results are kept")
        elif run in where and (where[run], run) not in showed:  # not a twin's shared run
            lines.append(f"{label} is {where[run]} now (the same config, moved in CONFIGS): "
                         f"its results are kept")
        elif label in job.configs and job.configs[label].get("name") == \
                entry["config"].get("name"):
            record = store.read_record(job.out / run)
            change = "its run's record cannot be read (run.json edited or deleted?)" \
                if record is None else \
                store.what_differs(record, job.identity(label, seed), job.neutral)
            if change == "nothing":  # another run of the very same: a copy of the folder
                continue
            lines.append(f"{label} differs from its earlier results: {change}; "
                         + (f"it shows its earlier run {job.out / shown['run']} again, nothing "
                            f"to train" if shown else "it trains anew" if label in selected
                            else "it trains once selected (it is not in --configs)")
                         + f" (the run it replaces stays in {job.out / run}/)")
        else:
            name = entry["config"].get("name")
            lines.append(f"{label} differs from its earlier results: it is no longer in CONFIGS"
                         f"{f' (it was {name!r})' if name else ''}; its run stays in "
                         f"{job.out / run}/")
    return lines


def run_for(job, every, label, seed):
    """Of ``every``'s runs, the one (``label``, ``seed``) trains in or is done by, or None: one
    this process's --restart made, else the latest matching."""
    wanted = job.identity(label, seed)
    matching = [(run_dir, record) for run_dir, record in every.items()
                if store.matches(record, wanted, job.neutral)]
    own = [item for item in matching if item[0] in job.locks]
    return latest(own or matching, label) if matching else None


def latest(matching, label):
    """Of ``matching`` [(folder, record)], the latest trained as ``label`` if any (two identical
    configs keep their own runs), else the latest."""
    return max(matching, key=lambda item: (item[1].get("label") == label, item[1]["created"]))


def shown(job, every):
    """[(label, config, run folder, record)]: the run of ``every`` showing each config and seed."""
    rows = []
    for label, chosen in job.configs.items():
        by_seed = {}
        for run_dir, record in every.items():
            seed = record.get("seed")
            if isinstance(seed, int) and store.matches(record, job.identity(label, seed),
                                                       job.neutral):
                by_seed.setdefault(seed, []).append((run_dir, record))
        for seed in sorted(by_seed):  # not one --restart made but has not begun, if another
            begun = [(run_dir, record) for run_dir, record in by_seed[seed]
                     if record["history"] or record["status"] != "running"]
            run_dir, record = latest(begun or by_seed[seed], label)
            store.tidy(run_dir, record)
            rows.append((label, chosen, run_dir, record))
    return rows


def claim(job, label, chosen, seed, name):
    """Rank 0: (run folder, record, done already?) for (``label``, ``seed``): resumed (or made
    by --restart), waited for, or new. Holds the run's lock in job.locks until it ends."""
    while True:
        busy = None
        with store.store_lock(job.out):
            found = run_for(job, store.runs(job.out), label, seed)
            if found:
                run_dir, record = found
                store.tidy(run_dir, record)
                if store.usable(run_dir, record):
                    return run_dir, record, True
                if record["status"] == "finished":
                    job.say(f"{name}: its weights {run_dir / store.WEIGHTS} are missing or "
                            f"not those it finished with (deleted or overwritten by hand?), "
                            f"so it trains again in a new run")
                else:
                    lock = job.locks.get(run_dir) or store.lock(run_dir, blocking=False)
                    if lock is not None:
                        job.locks[run_dir] = lock
                        return run_dir, store.read_record(run_dir) or record, False
                    busy = run_dir
            if busy is None:
                run_dir = store.new_run(job.out, label, chosen, seed, job.header,
                                        job.identity(label, seed))
                job.locks[run_dir] = store.lock(run_dir, blocking=False)
                return run_dir, store.read_record(run_dir), False
        job.say(f"{name}: another process is training it right now (in {busy}); waiting "
                f"for it to finish.")
        os.close(store.lock(busy, blocking=True))


def release(job):
    for lock in job.locks.values():
        os.close(lock)
    job.locks.clear()


def record(job, training, status, predictions=None):
    """Rank 0: write the run's record (with per-class scores once finished), rebuild the views."""
    if not job.runtime.is_main:
        return
    entry = config_entry(training.label, training.seed, training.config, status,
                         training.progress, store.WEIGHTS)
    entry.pop("id")
    written = dict(training.record, **entry, precision=rt.precision(job.runtime),
                   compiled=job.runtime.compile)
    if job.script.log_every:
        written["steps_per_epoch"] = training.steps_per_epoch
    if predictions is not None:
        matrix = torch.bincount(job.on_device.test_labels.cpu() * 10 + predictions.cpu(),
                                minlength=100).view(10, 10)  # [true, predicted]
        per_class = (100.0 * matrix.diag() / matrix.sum(dim=1).clamp(min=1)).tolist()
        written.update(per_class_accuracy=dict(zip(data.CLASSES, per_class)),
                       confusion_matrix=matrix.tolist(),
                       weights_sha256=store.sha256(training.run_dir / store.WEIGHTS))
    if status in store.ENDED:
        written["ended"] = time.time()
    save_json(written, training.run_dir / store.RECORD)
    training.record = written
    last_epoch = training.progress["epoch"] >= training.config["num_epochs"]
    for line in refresh(job, final=status != "running",
                        drawn_next=status == "running" and last_epoch):
        if line not in job.said:  # once, not every epoch
            job.said.add(line)
            job.say(line)


def finish(job, training, status):
    """Save a finished training's weights and predictions, record how it ended (the run's
    last write), drop its checkpoint (kept after out-of-memory: a rerun carries on)."""
    from .train import predict  # the loop's module imports this one

    runtime, model = job.runtime, rt.unwrap(training.model)
    predictions = None
    if runtime.is_main and status == "finished":
        predictions, on_device = training.predictions, job.on_device
        if predictions is None:  # resumed with nothing left to train: no test pass ran
            predictions = predict(model, on_device.test_images, on_device.scale,
                                  on_device.shift, runtime, training.config.get("tta", False))
        outputs.save_weights(model, training.run_dir / store.WEIGHTS)
        labels = on_device.test_labels.cpu()
        pick = torch.linspace(0, len(labels) - 1, min(32, len(labels))).long()
        store.save_predictions(training.run_dir, predictions.cpu().numpy(), labels.numpy(),
                               pick.numpy(), on_device.test_images[pick].cpu().numpy())
    record(job, training, status, predictions)  # after the weights: "finished" follows them
    if runtime.is_main:  # its checkpoint dropped if it ended (tidy), its lock let go
        store.tidy(training.run_dir, training.record)
        os.close(job.locks.pop(training.run_dir))


def drawn(job, results=None):
    """What the PNGs show, when they were drawn after the results JSON was last written (so
    a kill cut no drawing short): its configs and what they ran on; else None."""
    path = job.out / job.script.results_file
    results = load_results(path) if results is None else results
    with contextlib.suppress(OSError):
        written = path.stat().st_mtime
        if isinstance(results, dict) and all((job.out / name).stat().st_mtime >= written
                                             for name in PLOT_FILES[:3]):
            return [results[key] for key in ("configs", "devices", "data")]
    return None


def refresh(job, final, drawn_next=False, locked=False, drawn=None):
    """Rank 0: rebuild the views: results JSON and weights each time, the PNGs when ``final`` or
    due, unless ``drawn_next`` (the config's end follows at once) or already ``drawn``. Returns
    the lines that say what could not be a view."""
    def draw(results):
        due = not drawn_next and time.monotonic() - job.drawn_at >= REFRESH_RATIO * job.drawing
        kept = []
        if (final or due) and drawn != [results[key] for key in ("configs", "devices", "data")]:
            started = time.monotonic()
            kept = plots.draw_views(job.out, results, store.examples(job.out, results))
            job.drawn_at, job.drawing = time.monotonic(), time.monotonic() - started
        job.results = results
        return kept

    with contextlib.nullcontext() if locked else store.store_lock(job.out):
        every = store.runs(job.out)
        return store.write_views(job.out, job.script.results_file, job.script.weights_file,
                                 job.header, shown(job, every), draw, every)
