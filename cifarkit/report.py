"""modelset/ -> modelset/REPORT.md and modelset/figures/: the report's tables and figures,
rebuilt from whatever results JSON files the scripts have written."""
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import plots, store
from .results import CLASSES
from .results import config_label, mean_std, settings, write_atomically

TASKS = {  # script -> the report task it reproduces
    "Original_version_model.py": "Task 1: tutorial LeNet baseline",
    "L2_regularization.py": "Task 2: LeNet + L2 regularisation",
    "Dropout_regularization.py": "Task 2: LeNet + Dropout",
    "Original_version_model_multiGPU.py": "Task 3: LeNet hyper-parameter sweep",
    "Resnet_model.py": "Task 4: ResNet-18",
}
SWEEP_SCRIPT = "Original_version_model_multiGPU.py"
NUMBER = (int, float)
KIND_NAMES = {dict: "an object", list: "a list", str: "a string", NUMBER: "a number",
              int: "a whole number"}
# The fields the report reads, checked before any is used, so a damaged file is skipped
# with a reason instead of stopping the report half-way with a traceback.
RUN_FIELDS = (("configs", list), ("devices", list), ("data", dict))
# Absent in some files (the rerun command then has no flags, one process, seed 0); present,
# they shape the "Not run yet" command and the seeds, so a wrong one skips the file too.
OPTIONAL_RUN_FIELDS = (("world_size", int), ("seed", int), ("command", str))
DATA_FIELDS = (("source", str), ("train_images", int), ("test_images", int))
ENTRY_FIELDS = (("id", str), ("config", dict), ("status", str), ("history", list))
OPTIONAL_ENTRY_FIELDS = (("seed", int), ("precision", str))
# The config keys that only name a config or quote the course report's figures
# (plots.NOT_SETTINGS): none changes what was trained or measured, so one of the wrong
# kind is dropped with a warning and the file's results are still reported.
NAMING_FIELDS = (("name", str), ("reported_accuracy", NUMBER), ("reported_seconds", NUMBER))
ABSENT = object()  # a config key one entry has and the other lacks
IGNORED = "ignored (it only names the config or quotes the report)"
CONFIG_FIELDS = (("lr", NUMBER), ("momentum", NUMBER), ("batch_size", NUMBER))  # Task 3's axes
RECORD_FIELDS = (("seconds", NUMBER), ("train_accuracy", NUMBER))
FINISHED_FIELDS = (("final_test_accuracy", NUMBER), ("best_test_accuracy", NUMBER),
                   ("final_train_accuracy", NUMBER), ("train_seconds", NUMBER))


@dataclass
class Run:
    """One results JSON that the report uses."""
    path: Path  # the file, inside modelset
    results: dict
    # Its folder's name (plus the file's, where one folder holds two): headings, legends and
    # figure file names use it, so two folders of one script never overwrite each other.
    name: str
    # The naming fields of the wrong kind that were dropped from it, in words (NAMING_FIELDS)
    ignored: list = field(default_factory=list)

    @property
    def script(self):
        return self.results["script"]


def load_runs(modelset):
    """([Run], [(path, why it was skipped)]) for every results JSON one folder below
    ``modelset``; the runs in TASKS order, then by folder."""
    loaded, skipped = [], []
    for path in sorted(Path(modelset).glob("*/[!.]*.json")):  # not hidden ones
        results, problem, ignored = _read(path)
        if problem:
            skipped.append((path, problem))
        else:
            loaded.append((path, results, ignored))
    folders = [path.parent for path, _, _ in loaded]
    runs = [Run(path, results, path.parent.name if folders.count(path.parent) == 1
                else f"{path.parent.name}_{path.stem}", ignored)
            for path, results, ignored in loaded]
    return sorted(runs, key=lambda run: (list(TASKS).index(run.script), run.name)), skipped


def is_results_file(path):
    """Whether ``path`` is a results JSON this report can read."""
    return _read(path)[1] is None


def _read(path):
    """(results, None, [naming fields dropped, in words]), or (None, what is wrong with the
    file, in words, []). Only a regular file is read: a named pipe called x.json would
    block the report until something wrote to it."""
    try:
        content = _regular_file_bytes(path)
        if content is None:
            return None, "not a regular file (a named pipe, a device or a folder)", []
        results = json.loads(content.decode("utf-8"))
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})", []
    except ValueError as error:  # UnicodeDecodeError included
        return None, f"not valid JSON ({error})", []
    except RecursionError:  # json gives up on arrays nested thousands deep this way
        return None, "not valid JSON for this report (nested too deeply to read)", []
    ignored = []
    problem = _results_problem(results, ignored)
    return (None, problem, []) if problem else (results, None, ignored)


def _regular_file_bytes(path):
    """The content of ``path``, or None when it is not a regular file. Opened without
    blocking and then checked, so a pipe put in its place after a check cannot hang us."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        with open(descriptor, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(descriptor)


def _wrong_field(record, fields, optional=False):
    """The first of ``fields`` ((key, kind) pairs) that ``record`` lacks (unless
    ``optional``) or holds as another kind, in words; None when all are right. true and
    false are not numbers here, though Python counts them as ints."""
    for key, kind in fields:
        if optional and key not in record:
            continue
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"'{key}' is {'not' if optional else 'missing or not'} {KIND_NAMES[kind]}"
    return None


def _results_problem(results, ignored):
    """What makes ``results`` unusable for the report, in words, or None. The naming fields
    of the wrong kind (NAMING_FIELDS) are dropped from it instead, each said in ``ignored``."""
    if not isinstance(results, dict):
        return f"not a results file (it holds {KIND_NAMES.get(type(results), 'a value')})"
    script = results.get("script")
    if not isinstance(script, str) or script not in TASKS:
        what = KIND_NAMES[type(script)] if isinstance(script, (dict, list)) else repr(script)
        return f"not a results file of the five scripts ('script' is {what})"
    problem = (_wrong_field(results, RUN_FIELDS) or _wrong_field(results["data"], DATA_FIELDS)
               or _wrong_field(results, OPTIONAL_RUN_FIELDS, optional=True))
    if problem or not all(isinstance(device, str) for device in results["devices"]):
        return problem or "'devices' is not a list of names"
    if results.get("world_size", 1) < 1:
        return "'world_size' is less than 1"
    for number, entry in enumerate(results["configs"], start=1):
        problem = _entry_problem(entry, results.get("seed", 0))
        if problem:
            return f"configs entry {number}: {problem}"
        ignored += [f"configs entry {number}: its config: {why}"
                    for why in _drop_wrong_names(entry["config"])]
    return _grouping_problem(results["configs"])


def _entry_problem(entry, seed):
    """What is wrong with one config's record, or None; fills in the fields older files lack."""
    problem = _shape_problem(entry)
    if problem:
        return problem
    entry.setdefault("seed", seed)
    last = entry["history"][-1] if entry["history"] else {}
    entry.setdefault("final_train_accuracy", last.get("train_accuracy"))
    if entry["status"] == "finished":  # the tables and figures compute with these
        if not entry["history"]:
            return "finished, but its 'history' holds no epoch"
        return _wrong_field(entry, FINISHED_FIELDS) or _confusion_problem(entry)
    return None


def _shape_problem(entry):
    if not isinstance(entry, dict):
        return "not an object"
    problem = (_wrong_field(entry, ENTRY_FIELDS)
               or _wrong_field(entry, OPTIONAL_ENTRY_FIELDS, optional=True))
    if problem:
        return problem
    if not re.fullmatch(r"config_\d+", entry["id"]):  # the figures colour configs by N
        return f"'id' is {entry['id']!r}, not config_N"
    problem = _wrong_field(entry["config"], CONFIG_FIELDS) or next(
        (f"'{key}' is {KIND_NAMES[type(value)]}, not a single value"  # as the kit's are
         for key, value in entry["config"].items()
         if isinstance(value, (dict, list)) and key not in plots.NOT_SETTINGS), None)
    if problem:
        return f"its config: {problem}"
    for epoch, record in enumerate(entry["history"], start=1):
        problem = _record_problem(record)
        if problem:
            return f"history record {epoch}: {problem}"
    return None


def _drop_wrong_names(config):
    """Remove from ``config`` each naming field (NAMING_FIELDS) of the wrong kind: what each
    was, in words. The rest of the report then reads the config as if it had none."""
    dropped = []
    for key, kind in NAMING_FIELDS:
        problem = _wrong_field(config, [(key, kind)], optional=True)
        if problem:
            del config[key]
            dropped.append(problem)
    return dropped


def _grouping_problem(entries):
    """Why ``entries`` cannot be read as configs over seeds, or None: the report averages the
    entries of one id, so each (id, seed) must appear once and every entry of an id must
    hold one config (naming fields apart) and, where recorded, one model."""
    first, seen = {}, {}
    for number, entry in enumerate(entries, start=1):
        run = (entry["id"], entry["seed"])
        if run in seen:
            return (f"configs entries {seen[run]} and {number} are both {entry['id']} seed "
                    f"{entry['seed']}: a config's result for one seed must appear once")
        seen[run] = number
        earlier = first.setdefault(entry["id"], entry)
        change = _config_change(earlier, entry)
        if change:
            return (f"{entry['id']} holds different configs under one id ({change}): the "
                    f"report would average them as one config; give one of them its own "
                    f"folder or config id")
    return None


def _config_change(entry, other):
    """How the configs (or models) of two entries of one id differ, in words ('seed 0:
    lr=0.01; seed 1: lr=0.5'); None when they are one config, naming fields apart."""
    configs = (entry["config"], other["config"])
    keys = [key for key in {**configs[0], **configs[1]} if key not in plots.NOT_SETTINGS
            and configs[0].get(key, ABSENT) != configs[1].get(key, ABSENT)]
    if keys:
        return "; ".join(f"seed {one['seed']}: " + ", ".join(
            f"{key}={config.get(key, '(absent)')}" for key in keys)
            for one, config in zip((entry, other), configs))
    if None not in (entry.get("model"), other.get("model")) and entry["model"] != other["model"]:
        return f"seeds {entry['seed']} and {other['seed']} record different models"
    return None


def _record_problem(record):
    if not isinstance(record, dict):
        return "not an object"
    for key in ("test_accuracy", "train_accuracy_eval"):  # null: not measured that epoch
        if record.get(key) is not None and _wrong_field(record, [(key, NUMBER)]):
            return f"'{key}' is not a number or null"
    return _wrong_field(record, RECORD_FIELDS)


def _confusion_problem(entry):
    if "confusion_matrix" not in entry:
        return None  # older files have none: the report then shows no confusion matrix
    size = len(CLASSES)
    matrix = entry["confusion_matrix"]
    if not (isinstance(matrix, list) and len(matrix) == size
            and all(isinstance(row, list) and len(row) == size
                    and all(isinstance(count, NUMBER) for count in row) for row in matrix)):
        return f"'confusion_matrix' is not {size} rows of {size} counts"
    per_class = entry.get("per_class_accuracy")
    if not (isinstance(per_class, dict)
            and all(isinstance(value, NUMBER) for value in per_class.values())):
        return "'per_class_accuracy' is missing or not an object of numbers"
    return None


def task_number(script):
    return int(TASKS[script].split(":")[0].split()[1])


def train_eval(entry):
    """(final eval-mode training accuracy, whether it is the running value instead): files
    written before the eval-mode value was recorded fall back to the running one."""
    last = entry["history"][-1] if entry["history"] else {}
    if last.get("train_accuracy_eval") is not None:
        return last["train_accuracy_eval"], False
    return entry["final_train_accuracy"], True


def _gap(entry):
    """Final train (eval mode) − test accuracy, in points; None unless finished."""
    if entry["status"] != "finished":
        return None
    return train_eval(entry)[0] - entry["final_test_accuracy"]


def _finished_groups(results):
    """{config id: [finished entries, one per seed]}, configs with none left out."""
    groups = {}
    for config_id, runs in plots.group_runs(results["configs"]).items():
        finished = [run for run in runs if run["status"] == "finished"]
        if finished:
            groups[config_id] = finished
    return groups


def _mean(entries, key):
    return float(np.mean([entry[key] for entry in entries]))


RUNNING_NOTE = ("† no eval-mode training accuracy in this file (written before the kit "
                "recorded it): the running value is shown and used for the gap; it is measured "
                "while the weights change and with dropout on, so it understates the gap.")


def summary_table(results):
    """The 'Results summary' table of one script, a row per config (mean ± std over seeds),
    and the note on older files' training accuracy where one is needed."""
    header = ("| config | settings | seeds | final test acc (%) | best test acc (%) | "
              "final train acc, eval mode (%) | final train acc, running (%) | "
              "gap train − test (pp) | training time (s) | device(s), precision | status |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [header]
    devices = ", ".join(results["devices"])
    any_running = False
    for config_id, runs in plots.group_runs(results["configs"]).items():
        finished = [run for run in runs if run["status"] == "finished"]

        def spread(values):
            return mean_std(values) if values else "—"

        running = any(train_eval(run)[1] for run in finished)
        any_running = any_running or running
        mark = " †" if running else ""
        statuses = sorted({run["status"] for run in runs})
        marks = ", ".join("**DIVERGED**" if status == "diverged" else status
                          for status in statuses)
        precisions = sorted({run["precision"] for run in runs if "precision" in run})
        where = "; ".join([devices] + precisions)
        name = f" ({runs[0]['config']['name']})" if "name" in runs[0]["config"] else ""
        eval_cell = "—" if running else spread([train_eval(run)[0] for run in finished])
        rows.append(f"| {config_id}{name} | {settings(runs[0]['config'])} | {len(runs)} | "
                    f"{spread([run['final_test_accuracy'] for run in finished])} | "
                    f"{spread([run['best_test_accuracy'] for run in finished])} | {eval_cell} | "
                    f"{spread([run['final_train_accuracy'] for run in finished])} | "
                    f"{spread([_gap(run) for run in finished])}{mark if finished else ''} | "
                    f"{spread([run['train_seconds'] for run in finished])} | {where} | {marks} |")
    return "\n".join(rows + ([f"\n{RUNNING_NOTE}"] if any_running else []))


def _save(figure, path):
    content = plots.png_bytes(figure)
    write_atomically(path, lambda file: file.write(content))
    return path


def _with_derived(entries):
    """Copies of the entries whose history also holds the gap (eval-mode train accuracy, or
    the running one in older files) and the elapsed seconds."""
    derived = []
    for entry in entries:
        elapsed, history = 0.0, []
        for record in entry["history"]:
            elapsed += record["seconds"]
            train = plots.values_of(record, "train_accuracy_eval")
            gap = (train - record["test_accuracy"]
                   if record.get("test_accuracy") is not None else None)
            history.append(dict(record, gap=gap, elapsed=elapsed))
        derived.append(dict(entry, history=history))
    return derived


def _images(run):
    data = run.results["data"]
    return f"{data['train_images']:,} training / {data['test_images']:,} test images"


def _mixes_subsets(runs):
    return len({(run.results["data"]["train_images"], run.results["data"]["test_images"])
                for run in runs}) > 1


def _mixed_warning(runs):
    """A warning line when the runs of one table or figure used different image counts."""
    if not _mixes_subsets(runs):
        return []
    counts = "; ".join(f"`{run.name}`: {_images(run)}" for run in runs)
    return [f"> **Warning: this compares runs on different numbers of images** ({counts}). "
            "Accuracies and gaps depend on the amount of data: compare runs of one size.", ""]


def gap_figure(task2_runs, path):
    """Task 2: train − test accuracy per epoch, control beside regularised, a panel per run."""
    plt = plots.pyplot()
    figure, panels = plt.subplots(1, len(task2_runs), figsize=(7 * len(task2_runs), 5.5),
                                  squeeze=False, sharey=True, layout="constrained")
    for axes, run in zip(panels[0], task2_runs):
        entries = run.results["configs"]
        plots.draw_config_curves(axes, _with_derived(entries), "gap",
                                 plots.short_labels(entries))
        axes.axhline(0, color="grey", linewidth=0.8)
        running = plots.uses_running(entries)
        axes.set(xlabel="epoch", ylabel="generalisation gap: train − test accuracy (points)")
        plots.titled(axes, f"{TASKS[run.script]} ({run.name})",
                     plots.subtitle(run.results, entries)
                     + ("; RUNNING train accuracy (older file): gap understated" if running
                        else ""))
        plots.whole_epochs(axes, plots.last_epoch(entries))
        plots.min_span(axes, plots.ACCURACY_SPAN)
        axes.grid(alpha=0.3)
        plots.add_legend(axes)
    figure.suptitle("Task 2: does regularisation shrink the gap between train and test accuracy?"
                    "\n(train accuracy in eval mode on a fixed sample of training images, "
                    "measured like the test accuracy)", fontsize=11)
    return _save(figure, path)


# Task 2's strength: the key each script regularises with, its axis name, the strength the
# report chose, and whether its axis is logarithmic.
STRENGTHS = {"L2_regularization.py": ("weight_decay", "weight decay", 1e-4, True),
             "Dropout_regularization.py": ("dropout", "dropout probability", 0.5, False)}


def strength_sweep(run):
    """[(strength, [finished entries, one per seed])], by strength: the largest family of
    the run's configs that differ in the script's strength key alone (so one image count,
    one number of epochs), when it holds three strengths or more; else []."""
    if run.script not in STRENGTHS:
        return []
    key, families = STRENGTHS[run.script][0], {}
    for finished in _finished_groups(run.results).values():
        config = finished[0]["config"]
        rest = json.dumps({name: value for name, value in config.items()
                           if name != key and name not in plots.NOT_SETTINGS}, sort_keys=True)
        strengths = families.setdefault(rest, {})
        strengths.setdefault(float(config.get(key, 0.0)), []).extend(finished)
    family = max(families.values(), key=len, default={})
    return sorted(family.items()) if len(family) >= 3 else []


def _spread(values):
    """Mean and standard deviation over seeds (0 for one seed)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _strength_positions(strengths, chosen, log):
    """x positions: the strengths, with 0 drawn a decade left of the smallest other (or of
    the report's ``chosen`` strength, marked too) on a log axis, where 0 has no place."""
    if not log:
        return strengths
    smallest = min([strength for strength in strengths if strength > 0] + [chosen])
    return [strength if strength > 0 else smallest / 10 for strength in strengths]


def strength_figure(run, points, path):
    """The final gap and test accuracy against the strength, mean ± std over seeds."""
    key, name, chosen, log = STRENGTHS[run.script]
    strengths = [strength for strength, _ in points]
    x = _strength_positions(strengths, chosen, log)
    plt = plots.pyplot()
    figure, panels = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for axes, measure, label in (
            (panels[0], _gap, "final gap: train (eval mode) − test (points)"),
            (panels[1], lambda entry: entry["final_test_accuracy"], "final test accuracy (%)")):
        spreads = [_spread([measure(entry) for entry in entries]) for _, entries in points]
        axes.errorbar(x, [mean for mean, _ in spreads], yerr=[std for _, std in spreads],
                      marker="o", capsize=4, label="mean ± std over seeds")
        axes.axvline(chosen, color="grey", linestyle="--", label=f"the report's {name}: {chosen:g}")
        if log:
            axes.set_xscale("log")
        axes.set_xticks(x, [f"{strength:g}" for strength in strengths])
        axes.minorticks_off()
        plots.min_span(axes, plots.ACCURACY_SPAN)
        axes.set(xlabel=f"{name} ({key})" + (" — 0 drawn at the far left" if log else ""),
                 ylabel=label)
        axes.grid(alpha=0.3)
        plots.add_legend(axes)
    seeds = sorted({len(entries) for _, entries in points})
    figure.suptitle(f"{TASKS[run.script]} ({run.name}): how strong must it be?\n"
                    f"{plots.subtitle(run.results, points[0][1])}; seeds per strength: "
                    f"{', '.join(map(str, seeds))}", fontsize=10)
    return _save(figure, path)


def strength_sentence(run, points):
    """The smallest strength whose gap is smaller than the control's (strength 0) by more
    than the seeds' spread (the larger of the two standard deviations), and the test
    accuracy there, in words."""
    name = STRENGTHS[run.script][1]
    measured = {strength: (_spread([_gap(entry) for entry in entries]),
                           _spread([entry["final_test_accuracy"] for entry in entries]))
                for strength, entries in points}
    if 0.0 not in measured:
        return f"{run.script} ({run.name}): the sweep has no control ({name} 0) to compare with"
    (control_gap, control_spread), (control_test, _) = measured[0.0]
    for strength, ((gap, spread), (test, _)) in measured.items():
        if strength > 0 and control_gap - gap > max(control_spread, spread):
            return (f"{run.script} ({run.name}): the smallest {name} whose gap is smaller "
                    f"than the control's by more than the seeds' spread is {strength:g} "
                    f"({gap:.2f} ± {spread:.2f} against {control_gap:.2f} ± "
                    f"{control_spread:.2f} points), with a test accuracy of {test:.2f}% "
                    f"against the control's {control_test:.2f}%")
    return (f"{run.script} ({run.name}): no {name} up to {max(measured):g} makes the gap "
            f"smaller than the control's ({control_gap:.2f} ± {control_spread:.2f} points) by "
            f"more than the seeds' spread")


SWEEP_AXES = (("lr", "learning rate", True), ("momentum", "momentum", False),
              ("batch_size", "batch size", True))  # key, axis name, log scale


def sweep_figure(sweep_runs, path):
    """Task 3: final test accuracy against lr, momentum and batch size, a row per run; in each
    panel a line joins the configs that differ only in that panel's setting."""
    plt = plots.pyplot()
    figure, grid = plt.subplots(len(sweep_runs), 3, figsize=(17, 6 * len(sweep_runs)),
                                squeeze=False, layout="constrained")
    for row, run in zip(grid, sweep_runs):
        groups = _finished_groups(run.results)
        for axes, (key, name, log) in zip(row, SWEEP_AXES):
            _sweep_panel(axes, groups, key, name, log)
        row[1].set_title(f"{run.name}: {plots.subtitle(run.results, run.results['configs'])}"
                         f"\nfinal test accuracy against {SWEEP_AXES[1][1]}", fontsize=10)
        if not groups:  # every config diverged or is unfinished: say so on the empty axes
            row[0].text(0.5, 0.5, "no finished config", ha="center", transform=row[0].transAxes)
    figure.suptitle(f"Task 3 ({SWEEP_SCRIPT}): final test accuracy of each config; a line "
                    "joins configs that differ only in the setting on its x axis; "
                    "★ the report's accuracy for that config", fontsize=11)
    return _save(figure, path)


def _sweep_panel(axes, groups, key, name, log):
    configs = [runs[0]["config"] for runs in groups.values()]
    others = [other for other in plots.differing_keys(configs) if other != key]
    lines = {}
    for runs in groups.values():
        config = runs[0]["config"]
        lines.setdefault(tuple((other, config.get(other)) for other in others), []).append(runs)
    palette = plots.pyplot().get_cmap("tab10").colors
    for index, (line_key, members) in enumerate(lines.items()):
        members.sort(key=lambda runs: runs[0]["config"][key])
        x = [runs[0]["config"][key] for runs in members]
        accuracies = [[run["final_test_accuracy"] for run in runs] for runs in members]
        names = [runs[0]["config"]["name"] for runs in members if "name" in runs[0]["config"]]
        label = ", ".join(names) or ", ".join(f"{k}={v}" for k, v in line_key) or "all configs"
        axes.errorbar(x, [np.mean(values) for values in accuracies], capsize=3,
                      yerr=[np.std(values) for values in accuracies] if max(map(len, accuracies))
                      > 1 else None, color=palette[index % 10], label=label,
                      **plots.line_style(index, 1))
        reported = [(runs[0]["config"][key], runs[0]["config"]["reported_accuracy"])
                    for runs in members if "reported_accuracy" in runs[0]["config"]]
        if reported:
            axes.plot(*zip(*reported), linestyle="none", marker="*", markersize=11,
                      color=palette[index % 10], alpha=0.7)
    values = sorted({runs[0]["config"][key] for runs in groups.values()})
    if log and values:
        axes.set_xscale("log")
    if values:
        from matplotlib.ticker import NullLocator

        axes.set_xticks(values, [f"{value:g}" for value in values])  # only the values run
        axes.xaxis.set_minor_locator(NullLocator())
        plt_labels = axes.get_xticklabels()
        if len(values) > 5:  # many values on a log axis: tilt them rather than overlap
            for label in plt_labels:
                label.set(rotation=45, ha="right")
    axes.set(xlabel=name + (" (log scale)" if log else ""), ylabel="final test accuracy (%)")
    if key != SWEEP_AXES[1][0]:
        axes.set_title(f"final test accuracy against {name}", fontsize=10)
    plots.min_span(axes, plots.ACCURACY_SPAN)
    axes.grid(alpha=0.3)
    if lines:
        axes.plot([], [], linestyle="none", marker="*", color="grey", markersize=11,
                  label="the report's accuracy (50,000 training images)")
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))


def best_group(results):
    """The finished config with the highest mean final test accuracy: its entries, or []."""
    groups = _finished_groups(results)
    return max(groups.values(), key=lambda runs: _mean(runs, "final_test_accuracy"),
               default=[])


MIXED_NOTE = "RUNS ON DIFFERENT NUMBERS OF IMAGES ARE SHOWN TOGETHER: compare with care"


def _time_curve(entries):
    """(cumulative training seconds, test accuracy, its std) per epoch of one config: means
    over its entries (one per seed)."""
    derived = _with_derived(entries)
    _, accuracy, std = plots.mean_curve(derived, "test_accuracy")
    return plots.mean_curve(derived, "elapsed")[1], accuracy, std


def _time_axes(axes, seconds):
    """Label a test accuracy against training time plot; the time on a log scale when
    ``seconds`` (every time drawn) spans more than 30 times (LeNet's seconds beside hours)."""
    spread = [value for value in seconds if value > 0]
    if spread and max(spread) / min(spread) > 30:
        axes.set_xscale("log")
    axes.set(xlabel="training time (s, cumulative" + (", log scale)" if
                                                       axes.get_xscale() == "log" else ")"),
             ylabel="test accuracy (%)")


def accuracy_time_figure(runs, path):
    """Task 4: test accuracy against training time, the best config of each run, coloured by
    script (LeNet dashed, ResNet-18 solid), with the report's ResNet-18 points."""
    plt = plots.pyplot()
    figure, axes = plt.subplots(figsize=(10, 6))
    shown = [(run, best_group(run.results)) for run in runs]
    shown = [(run, best) for run, best in shown if best]
    mixed = _mixes_subsets([run for run, _ in shown])
    differing = plots.differing_keys([best[0]["config"] for _, best in shown])
    palette = plt.get_cmap("tab10").colors
    for index, (run, best) in enumerate(shown):
        resnet = run.script == "Resnet_model.py"
        elapsed, accuracy, std = _time_curve(best)
        config = best[0]["config"]
        images = f" [{run.results['data']['train_images']:,} images]" if mixed else ""
        colour = palette[list(TASKS).index(run.script)]
        style = dict(plots.line_style(index, len(elapsed)), linestyle="-" if resnet else "--")
        axes.plot(elapsed, accuracy, color=colour, **style,
                  label=f"{'ResNet-18' if resnet else 'LeNet'} {run.name}: "
                        f"{plots.legend_label(best[0]['id'], config, differing)}{images}")
        if len(best) > 1:
            axes.fill_between(elapsed, accuracy - std, accuracy + std, color=colour, alpha=0.15,
                              label=f"±1 std over {len(best)} seeds")
        if "reported_seconds" in config and "reported_accuracy" in config:
            axes.plot(config["reported_seconds"], config["reported_accuracy"], marker="*",
                      markersize=13, linestyle="none", color=colour,
                      label=f"the report's {best[0]['id']}, on one A100 (50,000 images): "
                            f"other hardware, its time not comparable with ours")
    _time_axes(axes, [value for line in axes.lines
                      for value in np.atleast_1d(line.get_xdata())])
    note = ("the best config of each folder; colour: script; solid: ResNet-18, dashed: LeNet"
            + (f"\n{MIXED_NOTE}" if mixed else ""))
    plots.titled(axes, "Task 4: test accuracy against training time", None)
    axes.text(0.01, 0.99, note, transform=axes.transAxes, va="top", fontsize=8,
              color="darkred" if mixed else "black")
    plots.min_span(axes, plots.ACCURACY_SPAN)
    axes.grid(alpha=0.3)
    plots.add_legend(axes)
    return _save(figure, path)


def _report_best(sweep_runs):
    """(accuracy, config id): the highest reported_accuracy among the Task 3 configs of
    ``sweep_runs``, the course report's best LeNet; None when no config carries one."""
    quoted = [(entry["config"]["reported_accuracy"], entry["id"]) for run in sweep_runs
              for entry in run.results["configs"]
              if isinstance(entry["config"].get("reported_accuracy"), NUMBER)]
    return max(quoted, default=None)


def _first_reach(curve, target):
    """(epoch, cumulative training seconds) of the first epoch at which ``curve`` (a
    _time_curve: means over seeds) reaches ``target`` test accuracy; None if it never does."""
    seconds, accuracy, _ = curve
    with np.errstate(invalid="ignore"):  # an epoch without a test accuracy never reaches it
        reached = np.flatnonzero(accuracy >= target - 1e-9)  # 65.75 held as 65.7499999
    return (int(reached[0]) + 1, float(seconds[reached[0]])) if len(reached) else None


def sweep_time_figure(sweep_runs, best, path):
    """Task 3: test accuracy against cumulative training time, a line per finished config of
    each run (mean over seeds, ±1 std band); ``best`` ((accuracy, config id) or None), the
    report's best LeNet, as a horizontal line, with a dot where each line first reaches it."""
    plt = plots.pyplot()
    figure, axes = plt.subplots(figsize=(11, 6.5))
    shown = [(run, _finished_groups(run.results)) for run in sweep_runs]
    shown = [(run, groups) for run, groups in shown if groups]
    mixed = _mixes_subsets([run for run, _ in shown])
    differing = plots.differing_keys([entries[0]["config"] for _, groups in shown
                                      for entries in groups.values()])
    seconds, offset = [], 0  # line styles continue from one run to the next
    for run, groups in shown:
        folder = f"{run.name}: " if len(shown) > 1 else ""
        images = f" [{run.results['data']['train_images']:,} images]" if mixed else ""
        labels = {config_id: folder + plots.legend_label(config_id, entries[0]["config"],
                                                         differing) + images
                  for config_id, entries in groups.items()}
        seconds += _draw_time_lines(axes, groups, labels, best, offset)
        offset += len(groups)
    if best:
        axes.axhline(best[0], color="black", linestyle=":", linewidth=1.3,
                     label=f"the report's best LeNet: {best[0]:g}% ({best[1]}, 50,000 "
                           "training images); a dot: where a line first reaches it")
        # at the left, where the curves are still low, so no curve hides it
        axes.text(0.005, best[0], f" the report's best LeNet: {best[0]:g}%", ha="left",
                  va="bottom", fontsize=9, transform=axes.get_yaxis_transform())
    _time_axes(axes, seconds)
    run, groups = shown[0]
    plots.titled(axes, "Task 3: test accuracy against training time, every finished config",
                 plots.subtitle(run.results, [entry for entries in groups.values()
                                              for entry in entries]) if len(shown) == 1 else
                 f"folders {', '.join(run.name for run, _ in shown)}; each timed on its own "
                 "device(s)")
    if mixed:
        axes.text(0.01, 0.99, MIXED_NOTE, transform=axes.transAxes, va="top", fontsize=8,
                  color="darkred")
    plots.min_span(axes, plots.ACCURACY_SPAN)
    axes.grid(alpha=0.3)
    plots.add_legend(axes)
    return _save(figure, path)


def _draw_time_lines(axes, groups, labels, best, style_offset):
    """Test accuracy against cumulative training time of one run's finished configs
    (``groups``), with a dot where each line first reaches ``best`` (None: no dots); returns
    the times drawn."""
    finished = [entry for entries in groups.values() for entry in entries]
    plots.draw_config_curves(axes, _with_derived(finished), "test_accuracy", labels,
                             x_key="elapsed", style_offset=style_offset)
    seconds = []
    for config_id, entries in groups.items():
        curve = _time_curve(entries)
        seconds += list(curve[0])
        reach = _first_reach(curve, best[0]) if best else None
        if reach:
            axes.plot(reach[1], curve[1][reach[0] - 1], marker="o", markersize=9,
                      color=plots.color(config_id), markeredgecolor="black",
                      linestyle="none", zorder=5)
    return seconds


def best_run(results):
    finished = [entry for entry in results["configs"]
                if entry["status"] == "finished" and "confusion_matrix" in entry]
    return max(finished, key=lambda entry: entry["final_test_accuracy"], default=None)


# What the report claimed for Task 2 (it gives no numbers for it; Tasks 1, 3 and 4 quote its
# numbers from the configs' reported_accuracy / reported_seconds).
TASK2_CLAIM = ("L2 weight decay (1e-4) and dropout (0.5) reduce overfitting, i.e. shrink the "
               "gap between training and test accuracy")
DATA_HELP = ("`DIR` is the folder holding your copy of CIFAR-10 (see docs/data.md, "
             "\"Data: downloaded, local, or offline\"); leave `--data-dir DIR` out to download "
             "it into `./data`.")


REPORT_HEADER = "# CIFAR-10 report, regenerated from"  # how make_report knows its own file


def write_report(modelset, runs, skipped, defined=None):
    """Write REPORT.md and figures/ into ``modelset`` from ``load_runs(modelset)``'s runs and
    skipped files, in task order; ``defined``: {script: how many configs its CONFIGS holds},
    for the "Not run yet" list. Return the report's path. An OSError means a file could not
    be written."""
    modelset = Path(modelset)
    figures = modelset / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [f"{REPORT_HEADER} `{modelset}`", "",
             f"Written by `python make_report.py --modelset {modelset}` on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {len(runs)} results file(s)"
             f"{f' ({len(skipped)} skipped, listed below)' if skipped else ''}. "
             "Accuracies are percentages on each run's test set. The gap is the final training "
             "accuracy in eval mode (on a fixed sample of up to 5,000 training images, measured "
             "as the test accuracy is) minus the final test accuracy, in percentage points; the "
             "running training accuracy (the mean over the last epoch, while the weights "
             "changed and dropout was on) is shown beside it. With several seeds a cell shows "
             "mean ± standard deviation.", ""]
    lines += _skipped_section(skipped, modelset) + _ignored_section(runs, modelset)
    sections = {1: _task1_section, 2: _task2_section, 3: _task3_section, 4: _task4_section}
    for number, section in sections.items():
        task_runs = [run for run in runs if task_number(run.script) == number]
        for run in task_runs:
            lines += _run_section(run, modelset, figures)
        lines += section(task_runs, runs, modelset, figures)
    lines += _missing_section(runs, defined or {})
    report = modelset / "REPORT.md"
    text = "\n".join(lines) + "\n"
    write_atomically(report, lambda file: file.write(text.encode()))
    return report


def _skipped_section(skipped, modelset):
    if not skipped:
        return []
    return (["## Skipped results files", "",
             "Left out of every table and figure below; once each is mended as said, rerun.",
             ""]
            + [f"- `{path.relative_to(modelset)}`: {why}." for path, why in skipped] + [""])


def _ignored_section(runs, modelset):
    notes = [f"- `{run.path.relative_to(modelset)}`: {why}; {IGNORED}."
             for run in runs for why in run.ignored]
    if not notes:
        return []
    return ["## Ignored fields", "", "Their results are reported without them; fix or remove "
            "the fields and rerun to see them.", ""] + notes + [""]


def _run_section(run, modelset, figures):
    results, data = run.results, run.results["data"]
    return ([f"## {TASKS[run.script]} (`{run.script}`), `{run.name}`", "",
             f"From `{run.path.relative_to(modelset)}`: {data['train_images']:,} training and "
             f"{data['test_images']:,} test images ({data['source']}); devices: "
             f"{', '.join(results['devices'])}; world size {results.get('world_size', 1)}; "
             f"seed {results.get('seed', 0)}.", "",
             summary_table(results), ""]
            + _best_section(run, modelset, figures) + _earlier_section(run, modelset, figures))


def earlier_runs(run):
    """{config id: (its shown run's record, [earlier records of it])} for the configs of a
    results JSON (its base seed) whose store holds earlier runs: runs of the same script
    with the same config name (or, unnamed, trained under the same id) that are not shown."""
    folder, base = run.path.parent, run.results.get("seed", 0)
    records, found = store.runs(folder), {}
    for entry in run.results["configs"]:
        current = records.get(folder / entry["run"]) if isinstance(entry.get("run"), str) \
            else None
        if entry["seed"] != base or current is None:
            continue
        name = entry["config"].get("name")
        earlier = [record for run_dir, record in records.items()
                   if run_dir != folder / entry["run"] and record["seed"] == base
                   and record["history"] and record["identity"].get("script") == run.script
                   and (record["config"].get("name") == name if name is not None
                        else "name" not in record["config"]
                        and record.get("label") == entry["id"])]
        if earlier:
            found[entry["id"]] = (current, earlier)
    return found


def change_label(earlier, current):
    """What differs between an earlier run of a config and its run now, as the legend says
    it: "lr 0.001 -> 0.005" (earlier -> now)."""
    was, now = (store.config_identity(record["identity"].get("config") or {}, {})
                for record in (earlier, current))
    change = store.describe_change(was, now)
    if not change and earlier["identity"].get("model") != current["identity"].get("model"):
        change = "the model changed"
    return change or "the same config, trained again (--restart)"


def earlier_figure(config_id, current, earlier, title, path):
    """A config's earlier runs and its run now: test accuracy against the epoch, each
    earlier curve labelled by what changed since."""
    plt = plots.pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for record in earlier:
        epochs = [point["epoch"] for point in record["history"]]
        axes.plot(epochs, [point["test_accuracy"] for point in record["history"]], "--",
                  marker="o" if len(epochs) == 1 else None, alpha=0.8,
                  label=f"earlier ({change_label(record, current)})")
    epochs = [point["epoch"] for point in current["history"]]
    axes.plot(epochs, [point["test_accuracy"] for point in current["history"]], "-",
              color="black", linewidth=2, marker="o" if len(epochs) == 1 else None,
              label=f"now: {config_id}")
    axes.set(title=f"{title}: {config_id}, earlier runs and now", xlabel="epoch",
             ylabel="test accuracy (%)")
    plots.whole_epochs(axes, max([len(record["history"]) for record in earlier] + epochs))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _earlier_section(run, modelset, figures):
    lines = []
    for config_id, (current, earlier) in earlier_runs(run).items():
        path = earlier_figure(config_id, current, earlier, Path(run.script).stem,
                              figures / f"{run.name}_{config_id}_earlier.png")
        changes = "; ".join(f"{change_label(record, current)}: "
                            f"{_final(record)}" for record in earlier)
        lines += [f"**{config_id}, earlier runs** (kept in `{run.path.parent.name}/runs/`): "
                  f"{changes}; now {_final(current)}.", ""]
        lines += _link(path, modelset, f"{config_id}: earlier runs and now")
    return lines


def _final(record):
    history = record["history"]
    return (f"{history[-1]['test_accuracy']:.2f}% after {history[-1]['epoch']} epoch(s)"
            + ("" if record["status"] == "finished" else f" ({record['status']})"))


def _link(path, modelset, caption):
    return [f"![{caption}]({quote(path.relative_to(modelset).as_posix())})", ""]


def _claim(text):
    return [f"**Our runs against the report:** {text}", ""]


def _epochs(entries):
    return max(len(entry["history"]) for entry in entries)


def _task1_section(task_runs, runs, modelset, figures):
    said = []
    for run in task_runs:
        best = best_group(run.results)
        if not best:
            continue
        reported = best[0]["config"].get("reported_accuracy")
        said.append(f"in `{run.name}` the baseline reached "
                    f"{_mean(best, 'final_test_accuracy'):.1f}% test accuracy after "
                    f"{_epochs(best)} epoch(s) on {_images(run)}"
                    + (f"; the report: {reported:g}% (all 50,000 training images)"
                       if reported is not None else ""))
    return _claim("; ".join(said) + ".") if said else []


def _task2_section(task_runs, runs, modelset, figures):
    if not task_runs:
        return []
    lines = ["## Task 2: regularisation and the generalisation gap", ""]
    lines += _link(gap_figure(task_runs, figures / "task2_gap.png"), modelset,
                   "train-test gap per epoch")
    lines += _mixed_warning(task_runs)
    lines += ["| script | folder | config | final gap, eval mode (pp) | final gap, running "
              "(pp) | final test acc (%) | images (train / test) |",
              "|---|---|---|---|---|---|---|"]
    for run in task_runs:
        counts = f"{run.results['data']['train_images']:,} / {run.results['data']['test_images']:,}"
        for finished in _finished_groups(run.results).values():
            running = any(train_eval(entry)[1] for entry in finished)
            lines.append(
                f"| {run.script} | {run.name} | {config_label(finished[0])} | "
                f"{'— †' if running else mean_std([_gap(entry) for entry in finished])} | "
                f"{mean_std([e['final_train_accuracy'] - e['final_test_accuracy'] for e in finished])}"
                f" | {mean_std([entry['final_test_accuracy'] for entry in finished])} | {counts} |")
    if any(train_eval(entry)[1] for run in task_runs for entry in run.results["configs"]
           if entry["status"] == "finished"):
        lines += ["", RUNNING_NOTE]
    said = [_gap_sentence(run) for run in task_runs]
    said = [text for text in said if text]
    lines += [""] + (_claim("; ".join(said) + f"; the report: {TASK2_CLAIM}.") if said else [])
    return lines + _strength_lines(task_runs, modelset, figures)


def _strength_lines(task_runs, modelset, figures):
    """A strength figure and its sentence for every Task 2 run that holds a sweep."""
    lines = []
    for run in task_runs:
        points = strength_sweep(run)
        if points:
            path = figures / f"task2_strength_{run.name}.png"
            lines += _link(strength_figure(run, points, path), modelset,
                           f"{STRENGTHS[run.script][1]} against the gap and test accuracy")
            lines += _claim(strength_sentence(run, points) + ".")
    return lines


def _gap_sentence(run):
    """What each regularised config did to the gap against the run's control, in words."""
    groups = _finished_groups(run.results)
    control_id = next((config_id for config_id, entries in groups.items()
                       if entries[0]["config"].get("name") == "control"), next(iter(groups), None))
    if control_id is None or len(groups) < 2:
        return None
    control = groups[control_id]
    gap = float(np.mean([_gap(entry) for entry in control]))
    accuracy = _mean(control, "final_test_accuracy")
    parts = []
    for config_id, entries in groups.items():
        if config_id == control_id:
            continue
        changed = plots.differing_keys([control[0]["config"], entries[0]["config"]])
        what = ", ".join(f"{key} {entries[0]['config'].get(key)}" for key in changed) or config_id
        new_gap = float(np.mean([_gap(entry) for entry in entries]))
        change = _mean(entries, "final_test_accuracy") - accuracy
        moved = ("left the gap at" if round(new_gap, 1) == round(gap, 1) else
                 "narrowed the gap from" if new_gap < gap else "widened the gap from")
        parts.append(f"{what} {moved} "
                     + (f"{gap:.1f} points " if moved.startswith("left") else
                        f"{gap:.1f} to {new_gap:.1f} points ")
                     + (f"at a cost of {-change:.1f} points of test accuracy" if change < 0
                        else f"and gained {change:.1f} points of test accuracy"))
    return (f"in `{run.name}` ({_images(run)}, {_epochs(control)} epochs), "
            + "; ".join(parts))


def _task3_section(task_runs, runs, modelset, figures):
    if not task_runs:
        return []
    lines = (["## Task 3: learning rate, momentum and batch size", ""]
             + _link(sweep_figure(task_runs, figures / "task3_sweep.png"), modelset, "sweep"))
    best = _report_best(task_runs)
    if any(_finished_groups(run.results) for run in task_runs):
        lines += _link(sweep_time_figure(task_runs, best, figures / "task3_accuracy_vs_time.png"),
                       modelset, "test accuracy against training time")
    lines += _mixed_warning(task_runs)
    said = []
    for run in task_runs:
        groups = _finished_groups(run.results)
        if not groups:
            continue
        ours = max(groups, key=lambda config_id: _mean(groups[config_id],
                                                       "final_test_accuracy"))
        reported = {config_id: entries[0]["config"]["reported_accuracy"]
                    for config_id, entries in groups.items()
                    if "reported_accuracy" in entries[0]["config"]}
        text = (f"in `{run.name}` ({_images(run)}, {_epochs(groups[ours])} epochs) the best of "
                f"{len(groups)} finished configs is {_describe(groups[ours])} at "
                f"{_mean(groups[ours], 'final_test_accuracy'):.1f}%")
        if reported:
            theirs = max(reported, key=reported.get)
            text += (f"; the report's best of the same configs: {_describe(groups[theirs])} at "
                     f"{reported[theirs]:g}%"
                     + (" (the same config)" if theirs == ours else ""))
        said.append(text)
    timed = [_time_sentence(run, best) for run in task_runs] if best else []
    timed = [text for text in timed if text]
    return (lines + (_claim("; ".join(said) + ".") if said else [])
            + ([f"**Time to the report's best LeNet, {best[0]:g}% (its {best[1]}, all 50,000 "
                f"training images):** " + " ".join(timed), ""] if timed else []))


def _time_sentence(run, best):
    """How soon the finished configs of ``run`` first reach the report's best LeNet
    (``best``: (accuracy, config id)), in words: the fastest two (the closest when none
    does), the report's best config, and how many reach it; None when none finished."""
    groups = _finished_groups(run.results)
    if not groups:
        return None
    curves = {config_id: _time_curve(entries) for config_id, entries in groups.items()}
    reaches = {config_id: _first_reach(curve, best[0]) for config_id, curve in curves.items()}
    fastest = sorted((config_id for config_id in groups if reaches[config_id]),
                     key=lambda config_id: reaches[config_id][1])
    told = fastest[:2] or [max(curves, key=lambda config_id: np.nanmax(curves[config_id][1]))]
    if best[1] in groups and best[1] not in told:
        told.append(best[1])
    parts = [_reach_said(config_id, groups[config_id], curves[config_id], best)
             for config_id in told]
    parts.append(f"{len(fastest)} of {len(groups)} finished configs "
                 + ("reaches it" if len(fastest) == 1 else "reach it"))
    seeds = max(len(entries) for entries in groups.values())
    return (f"In `{run.name}` ({_images(run)}, {', '.join(run.results['devices'])}"
            + (f"; means over up to {seeds} seeds" if seeds > 1 else "") + "), "
            + "; ".join(parts) + ".")


def _reach_said(config_id, entries, curve, best):
    """'config_12 (speedrun) first reaches it after 19 s of training (epoch 5 of 8)', or
    that it does not, with its best test accuracy."""
    config = entries[0]["config"]
    named = (config_id + (f" ({config['name']})" if "name" in config else "")
             + (" (the report's best config)" if config_id == best[1] else ""))
    reach = _first_reach(curve, best[0])
    if reach:
        return (f"{named} first reaches it after {_duration(reach[1])} of training "
                f"(epoch {reach[0]} of {_epochs(entries)})")
    return (f"{named} does not reach it (its best: {np.nanmax(curve[1]):.1f}% in "
            f"{_epochs(entries)} epochs)")


def _duration(seconds):
    """'4.2 s', '19 s', '2,412 s (40 min)'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:,.0f} s" + (f" ({seconds / 60:.0f} min)" if seconds >= 600 else "")


def _describe(entries):
    config = entries[0]["config"]
    return (f"{entries[0]['id']} (lr {config['lr']:g}, momentum {config['momentum']:g}, "
            f"batch {config['batch_size']})")


def _task4_section(task_runs, runs, modelset, figures):
    if not task_runs:
        return []
    lines = (["## Task 4: LeNet against ResNet-18, accuracy for time", ""]
             + _link(accuracy_time_figure(runs, figures / "task4_accuracy_vs_time.png"),
                     modelset, "accuracy against time")
             + _mixed_warning([run for run in runs if best_group(run.results)]))
    bests = [(run, best_group(run.results)) for run in runs]
    bests = [(run, best) for run, best in bests if best]
    resnet = [(run, best) for run, best in bests if run.script == "Resnet_model.py"]
    lenet = [(run, best) for run, best in bests if run.script != "Resnet_model.py"]
    if not resnet:
        return lines
    said = [_best_said("ResNet-18", *max(resnet, key=lambda pair: _mean(pair[1],
                                                                        "final_test_accuracy")))]
    if lenet:
        said.append(_best_said("LeNet", *max(lenet, key=lambda pair: _mean(
            pair[1], "final_test_accuracy"))))
    reported = [run_best[1][0]["config"] for run_best in resnet  # a point needs both
                if {"reported_seconds", "reported_accuracy"} <= run_best[1][0]["config"].keys()]
    lenet_reported = [entry["config"]["reported_accuracy"] for run in runs
                      if run.script != "Resnet_model.py" for entry in run.results["configs"]
                      if "reported_accuracy" in entry["config"]]
    claim = "; ".join(said)
    if reported:  # the report's figures for the configs we ran, from their configs
        config = max(reported, key=lambda config: config["reported_accuracy"])
        claim += (f"; the report: ResNet-18 ({config['lr']:g} lr, {config['momentum']:g} "
                  f"momentum) {config['reported_accuracy']:g}% in "
                  f"{config['reported_seconds']:g} s on one A100"
                  + (f", against {max(lenet_reported):g}% for the report's best LeNet "
                     f"among the configs we ran" if lenet_reported else ""))
    return lines + _claim(claim + ".")


def _best_said(model, run, best):
    return (f"{model}'s best here is {best[0]['id']} of `{run.name}` at "
            f"{_mean(best, 'final_test_accuracy'):.1f}% in {_mean(best, 'train_seconds'):.0f} s "
            f"({_images(run)}, {_epochs(best)} epoch(s), {', '.join(run.results['devices'])})")


def _best_section(run, modelset, figures):
    best = best_run(run.results)
    if best is None:
        return []
    lines = [f"### Best config of `{run.script}` in `{run.name}`: {config_label(best)} "
             f"(seed {best['seed']})", ""]
    confusion = plots.confusion_figure(best["confusion_matrix"], CLASSES,
                                       f"{run.name}, {best['id']}: confusion matrix")
    lines += _link(_save(confusion, figures / f"confusion_{run.name}.png"), modelset,
                   "confusion matrix")
    per_class = best["per_class_accuracy"]
    lines += ["| " + " | ".join(per_class) + " |", "|" + "---|" * len(per_class),
              "| " + " | ".join(f"{value:.1f}" for value in per_class.values()) + " |", ""]
    examples = run.path.parent / "examples.png"
    if examples.is_file():  # not a named pipe or folder of that name: copying one hangs or fails
        copy = figures / f"examples_{run.name}.png"
        shutil.copyfile(examples, copy)
        lines += _link(copy, modelset, "test images with predictions")
    return lines


def rerun_command(run, numbers):
    """The command that trains configs ``numbers`` into ``run``'s folder with the flags of its
    earlier run (data, subset, epochs, seeds), so the results already there stay. Its
    --data-dir stays as recorded, absent included: another data source would move them aside."""
    words = run.results.get("command", "").split()
    flags = words[words.index(run.script) + 1:] if run.script in words else []
    kept, skip = [], False
    for word in flags:
        if skip:
            skip = False
        elif word in ("--configs", "--out"):
            skip = True  # drop it and its value: replaced below
        elif word != "--restart" and not word.startswith(("--configs=", "--out=")):
            kept.append(word)
    world = run.results.get("world_size", 1)
    launcher = f"torchrun --standalone --nproc-per-node={world}" if world > 1 else "python"
    return " ".join([launcher, run.script] + kept
                    + ["--out", str(run.path.parent), "--configs", ",".join(numbers)])


def _missing_section(runs, defined):
    lines = ["## Not run yet", "", DATA_HELP, ""]
    for script in TASKS:
        own = [run for run in runs if run.script == script]
        if not own:
            lines.append(f"- `{script}` ({TASKS[script]}): no results; run "
                         f"`python {script} --data-dir DIR`.")
            continue
        done = {entry["id"] for run in own for entry in run.results["configs"]}
        missing = [str(number) for number in range(1, defined.get(script, 0) + 1)
                   if f"config_{number}" not in done]  # in none of its folders
        if missing:
            lines.append(f"- `{script}`: config(s) {', '.join(missing)} of its CONFIGS have no "
                         f"results in any folder; to add them beside the results of "
                         f"`{own[-1].name}` (same data and flags, so nothing is moved aside): "
                         f"`{rerun_command(own[-1], missing)}`.")
    if len(lines) == 4:
        lines[2:] = ["Every script and every config has results.", ""]
    return lines + [""]
