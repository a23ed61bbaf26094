"""modelset/ -> modelset/REPORT.md and modelset/figures/: the report's tables and figures,
rebuilt from whatever results JSON files the scripts have written."""
import importlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import plots
from .data import CLASSES
from .outputs import config_label, mean_std, settings, write_atomically

TASKS = {  # script -> the report task it reproduces
    "Original_version_model.py": "Task 1: tutorial LeNet baseline",
    "L2_regularization.py": "Task 2: LeNet + L2 regularisation",
    "Dropout_regularization.py": "Task 2: LeNet + Dropout",
    "Original_version_model_multiGPU.py": "Task 3: LeNet hyper-parameter sweep",
    "Resnet_model.py": "Task 4: ResNet-18",
}
TASK2_SCRIPTS = ("L2_regularization.py", "Dropout_regularization.py")
SWEEP_SCRIPT = "Original_version_model_multiGPU.py"
NUMBER = (int, float)
KIND_NAMES = {dict: "an object", list: "a list", str: "a string", NUMBER: "a number"}
# The fields the report reads, checked before any is used, so a damaged file is skipped
# with a reason instead of stopping the report half-way with a traceback.
RUN_FIELDS = (("configs", list), ("devices", list), ("data", dict))
DATA_FIELDS = (("source", str), ("train_images", int), ("test_images", int))
ENTRY_FIELDS = (("id", str), ("config", dict), ("status", str), ("history", list))
CONFIG_FIELDS = (("lr", NUMBER), ("momentum", NUMBER), ("batch_size", NUMBER))  # Task 3's axes
RECORD_FIELDS = (("seconds", NUMBER), ("train_accuracy", NUMBER))
FINISHED_FIELDS = (("final_test_accuracy", NUMBER), ("best_test_accuracy", NUMBER),
                   ("final_train_accuracy", NUMBER), ("train_seconds", NUMBER))
MARKERS = "osD^v<>ph*"  # Task 4: one per run, so two runs of one model (same colours) stay apart


@dataclass
class Run:
    """One results JSON that the report uses."""
    path: Path  # the file, inside modelset
    results: dict
    # Its folder's name (plus the file's, where one folder holds two): headings, legends and
    # figure file names use it, so two folders of one script never overwrite each other.
    name: str

    @property
    def script(self):
        return self.results["script"]


def load_runs(modelset):
    """([Run], [(path, why it was skipped)]) for every results JSON one folder below
    ``modelset``; the runs in TASKS order, then by folder."""
    loaded, skipped = [], []
    for path in sorted(Path(modelset).glob("*/*.json")):
        results, problem = _read(path)
        if problem:
            skipped.append((path, problem))
        else:
            loaded.append((path, results))
    folders = [path.parent for path, _ in loaded]
    runs = [Run(path, results, path.parent.name if folders.count(path.parent) == 1
                else f"{path.parent.name}_{path.stem}") for path, results in loaded]
    return sorted(runs, key=lambda run: (list(TASKS).index(run.script), run.name)), skipped


def _read(path):
    """(results, None), or (None, what is wrong with the file, in words)."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except ValueError as error:  # UnicodeDecodeError included
        return None, f"not valid JSON ({error})"
    problem = _results_problem(results)
    return (None, problem) if problem else (results, None)


def _wrong_field(record, fields):
    """The first of ``fields`` ((key, kind) pairs) that ``record`` lacks or holds as another
    kind, in words; None when all are there."""
    for key, kind in fields:
        if not isinstance(record.get(key), kind):
            return f"'{key}' is missing or not {KIND_NAMES[kind]}"
    return None


def _results_problem(results):
    if not isinstance(results, dict):
        return f"not a results file (it holds {KIND_NAMES.get(type(results), 'a value')})"
    if results.get("script") not in TASKS:
        return (f"not a results file of the five scripts ('script' is "
                f"{results.get('script')!r})")
    problem = _wrong_field(results, RUN_FIELDS) or _wrong_field(results["data"], DATA_FIELDS)
    if problem or not all(isinstance(device, str) for device in results["devices"]):
        return problem or "'devices' is not a list of names"
    for number, entry in enumerate(results["configs"], start=1):
        problem = _entry_problem(entry, results.get("seed", 0))
        if problem:
            return f"configs entry {number}: {problem}"
    return None


def _entry_problem(entry, seed):
    """What is wrong with one config's record, or None; fills in the fields older files lack."""
    problem = _shape_problem(entry)
    if problem:
        return problem
    entry.setdefault("seed", seed)
    last = entry["history"][-1] if entry["history"] else {}
    entry.setdefault("final_train_accuracy", last.get("train_accuracy"))
    if entry["status"] == "finished":  # the tables and figures compute with these
        return _wrong_field(entry, FINISHED_FIELDS) or _confusion_problem(entry)
    return None


def _shape_problem(entry):
    if not isinstance(entry, dict):
        return "not an object"
    problem = _wrong_field(entry, ENTRY_FIELDS)
    if problem:
        return problem
    if not re.fullmatch(r"config_\d+", entry["id"]):  # the figures colour configs by N
        return f"'id' is {entry['id']!r}, not config_N"
    if not isinstance(entry.get("precision", ""), str):
        return "'precision' is not a string"
    problem = _wrong_field(entry["config"], CONFIG_FIELDS)
    if problem:
        return f"its config: {problem}"
    for epoch, record in enumerate(entry["history"], start=1):
        problem = _record_problem(record)
        if problem:
            return f"history record {epoch}: {problem}"
    return None


def _record_problem(record):
    if not isinstance(record, dict):
        return "not an object"
    test_accuracy = record.get("test_accuracy")
    if test_accuracy is not None and not isinstance(test_accuracy, NUMBER):
        return "'test_accuracy' is not a number or null"
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


def defined_configs(script):
    """How many configs the script's CONFIGS holds now (importing a script trains nothing)."""
    try:
        return len(importlib.import_module(Path(script).stem).CONFIGS)
    except Exception:  # a script that no longer imports: report what the JSON has
        return 0


def _gap(entry):
    if entry["status"] != "finished":
        return None
    return entry["final_train_accuracy"] - entry["final_test_accuracy"]


def summary_table(results):
    """The 'Results summary' table of one script, a row per config (mean ± std over seeds)."""
    header = ("| config | settings | seeds | final test acc (%) | best test acc (%) | "
              "final train acc (%) | gap train − test (pp) | training time (s) | device(s), precision | "
              "status |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    rows = [header]
    devices = ", ".join(results["devices"])
    for config_id, runs in plots.group_runs(results["configs"]).items():
        finished = [run for run in runs if run["status"] == "finished"]

        def stat(key):
            values = [run[key] for run in finished]
            return mean_std(values) if values else "—"

        gaps = [_gap(run) for run in finished]
        statuses = sorted({run["status"] for run in runs})
        marks = ", ".join("**DIVERGED**" if status == "diverged" else status
                          for status in statuses)
        precisions = sorted({run["precision"] for run in runs if "precision" in run})
        where = "; ".join([devices] + precisions)
        name = f" ({runs[0]['config']['name']})" if "name" in runs[0]["config"] else ""
        rows.append(f"| {config_id}{name} | {settings(runs[0]['config'])} | {len(runs)} | "
                    f"{stat('final_test_accuracy')} | {stat('best_test_accuracy')} | "
                    f"{stat('final_train_accuracy')} | {mean_std(gaps) if gaps else '—'} | "
                    f"{stat('train_seconds')} | {where} | {marks} |")
    return "\n".join(rows)


def _save(figure, path):
    content = plots.png_bytes(figure)
    write_atomically(path, lambda file: file.write(content))
    return path


def _with_derived(entries):
    """Copies of the entries whose history also holds the gap and the elapsed seconds."""
    derived = []
    for entry in entries:
        elapsed, history = 0.0, []
        for record in entry["history"]:
            elapsed += record["seconds"]
            gap = (record["train_accuracy"] - record["test_accuracy"]
                   if record.get("test_accuracy") is not None else None)
            history.append(dict(record, gap=gap, elapsed=elapsed))
        derived.append(dict(entry, history=history))
    return derived


def gap_figure(task2_runs, path):
    """Task 2: train − test accuracy per epoch, control beside regularised, a panel per run."""
    plt = plots.pyplot()
    figure, panels = plt.subplots(1, len(task2_runs), figsize=(7 * len(task2_runs), 5),
                                  squeeze=False, sharey=True)
    for axes, run in zip(panels[0], task2_runs):
        plots.draw_config_curves(axes, _with_derived(run.results["configs"]), "gap",
                                 config_label)
        axes.axhline(0, color="grey", linewidth=0.8)
        axes.set(title=f"{TASKS[run.script]} ({run.name})", xlabel="epoch",
                 ylabel="generalisation gap: train − test accuracy (percentage points)")
        axes.grid(alpha=0.3)
        plots.add_legend(axes)
    figure.suptitle("Task 2: does regularisation shrink the gap between train and test accuracy?")
    return _save(figure, path)


def sweep_figure(sweep_runs, path):
    """Task 3: final test accuracy and training time against lr, momentum and batch size;
    two rows of panels per run."""
    plt = plots.pyplot()
    figure, grid = plt.subplots(2 * len(sweep_runs), 3, figsize=(15, 8 * len(sweep_runs)),
                                squeeze=False, layout="constrained")
    for index, run in enumerate(sweep_runs):
        _draw_sweep(grid[2 * index:2 * index + 2], run)
    figure.suptitle(f"Task 3: {SWEEP_SCRIPT}, each point a config (mean ± std over seeds)")
    return _save(figure, path)


def _draw_sweep(rows, run):
    groups = plots.group_runs(run.results["configs"])
    for column, key in enumerate(("lr", "momentum", "batch_size")):
        for row, (value_key, label) in enumerate((("final_test_accuracy",
                                                   "final test accuracy (%)"),
                                                  ("train_seconds", "training time (s)"))):
            axes = rows[row][column]
            for config_id, group in groups.items():
                finished = [entry for entry in group if entry["status"] == "finished"]
                if not finished:
                    continue
                values = np.array([entry[value_key] for entry in finished])
                x = group[0]["config"][key]
                axes.errorbar(x, values.mean(), yerr=values.std() if len(values) > 1 else None,
                              fmt="o", color=plots.color(config_id), capsize=3,
                              label=config_id)
                axes.annotate(config_id.split("_")[1], (x, values.mean()), fontsize=7,
                              xytext=(4, 4), textcoords="offset points")
            axes.set(xlabel=key + (" (log scale)" if key != "momentum" else ""), ylabel=label)
            if key != "momentum":
                axes.set_xscale("log")
            axes.grid(alpha=0.3)
    rows[0][1].set_title(f"{run.path.parent.name}/{run.path.name}")
    if rows[0][0].get_legend_handles_labels()[0]:
        rows[0][0].legend(fontsize=7)
    else:  # every config diverged or is unfinished: say so on the empty axes
        rows[0][0].text(0.5, 0.5, "no finished config", ha="center",
                        transform=rows[0][0].transAxes)


def accuracy_time_figure(runs, path):
    """Task 4: test accuracy against training time, every LeNet and ResNet-18 config."""
    plt = plots.pyplot()
    figure, axes = plt.subplots(figsize=(10, 6))
    for index, run in enumerate(runs):
        resnet = run.script == "Resnet_model.py"
        model = "ResNet-18" if resnet else "LeNet"
        first_new = len(axes.lines)
        plots.draw_config_curves(axes, _with_derived(run.results["configs"]), "test_accuracy",
                                 lambda entry: f"{model} {run.name} {entry['id']}",
                                 x_key="elapsed")
        for line in axes.lines[first_new:]:
            line.set(linestyle="-" if resnet else "--", marker=MARKERS[index % len(MARKERS)],
                     markevery=max(1, len(line.get_xdata()) // 15))
    axes.set(title="Task 4: test accuracy against training time (solid: ResNet-18, dashed: LeNet)",
             xlabel="training time (s, cumulative)", ylabel="test accuracy (%)")
    axes.grid(alpha=0.3)
    plots.add_legend(axes)
    return _save(figure, path)


def best_run(results):
    finished = [entry for entry in results["configs"]
                if entry["status"] == "finished" and "confusion_matrix" in entry]
    return max(finished, key=lambda entry: entry["final_test_accuracy"], default=None)


def write_report(modelset, runs, skipped):
    """Write REPORT.md and figures/ into ``modelset`` from ``load_runs(modelset)``'s runs and
    skipped files; return the report's path. An OSError means a file could not be written."""
    modelset = Path(modelset)
    figures = modelset / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [f"# CIFAR-10 report, regenerated from `{modelset}`", "",
             f"Written by `python make_report.py --modelset {modelset}` on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {len(runs)} results file(s)"
             f"{f' ({len(skipped)} skipped, listed below)' if skipped else ''}. "
             "Accuracies are percentages on each run's test set; the gap is final training "
             "accuracy (measured during the last epoch, dropout on) minus final test accuracy, "
             "in percentage points. With several seeds a cell shows mean ± standard deviation.", ""]
    lines += _skipped_section(skipped, modelset)
    for run in runs:
        lines += _run_section(run, modelset)
    lines += _task2_section(runs, modelset, figures)
    lines += _task3_section(runs, modelset, figures)
    lines += _task4_section(runs, modelset, figures)
    for run in runs:
        lines += _best_section(run, modelset, figures)
    lines += _missing_section(runs)
    report = modelset / "REPORT.md"
    text = "\n".join(lines) + "\n"
    write_atomically(report, lambda file: file.write(text.encode()))
    return report


def _skipped_section(skipped, modelset):
    if not skipped:
        return []
    return (["## Skipped results files", "",
             "Left out of every table and figure below; fix or remove them and rerun.", ""]
            + [f"- `{path.relative_to(modelset)}`: {why}." for path, why in skipped] + [""])


def _run_section(run, modelset):
    results, data = run.results, run.results["data"]
    return [f"## {TASKS[run.script]} (`{run.script}`), `{run.name}`", "",
            f"From `{run.path.relative_to(modelset)}`: {data['train_images']} training and "
            f"{data['test_images']} test images ({data['source']}); devices: "
            f"{', '.join(results['devices'])}; world size {results.get('world_size', 1)}; "
            f"seed {results.get('seed', 0)}.", "",
            summary_table(results), ""]


def _link(path, modelset, caption):
    return [f"![{caption}]({quote(path.relative_to(modelset).as_posix())})", ""]


def _task2_section(runs, modelset, figures):
    task2 = [run for run in runs if run.script in TASK2_SCRIPTS]
    if not task2:
        return []
    lines = ["## Task 2: regularisation and the generalisation gap", ""]
    lines += _link(gap_figure(task2, figures / "task2_gap.png"), modelset,
                   "train-test gap per epoch")
    lines += ["| script | folder | config | final gap (pp) | final test acc (%) |",
              "|---|---|---|---|---|"]
    for run in task2:
        for group in plots.group_runs(run.results["configs"]).values():
            finished = [entry for entry in group if entry["status"] == "finished"]
            if finished:
                lines.append(f"| {run.script} | {run.name} | {config_label(group[0])} | "
                             f"{mean_std([_gap(entry) for entry in finished])} | "
                             f"{mean_std([entry['final_test_accuracy'] for entry in finished])} |")
    return lines + [""]


def _task3_section(runs, modelset, figures):
    sweeps = [run for run in runs if run.script == SWEEP_SCRIPT]
    if not sweeps:
        return []
    return (["## Task 3: learning rate, momentum and batch size", ""]
            + _link(sweep_figure(sweeps, figures / "task3_sweep.png"), modelset, "sweep"))


def _task4_section(runs, modelset, figures):
    if not any(run.script == "Resnet_model.py" for run in runs):
        return []
    return (["## Task 4: LeNet against ResNet-18, accuracy for time", ""]
            + _link(accuracy_time_figure(runs, figures / "task4_accuracy_vs_time.png"),
                    modelset, "accuracy against time"))


def _best_section(run, modelset, figures):
    best = best_run(run.results)
    if best is None:
        return []
    lines = [f"## Best config of `{run.script}` in `{run.name}`: {config_label(best)} "
             f"(seed {best['seed']})", ""]
    confusion = plots.confusion_figure(best["confusion_matrix"], CLASSES,
                                       f"{run.name}, {best['id']}: confusion matrix")
    lines += _link(_save(confusion, figures / f"confusion_{run.name}.png"), modelset,
                   "confusion matrix")
    per_class = best["per_class_accuracy"]
    lines += ["| " + " | ".join(per_class) + " |", "|" + "---|" * len(per_class),
              "| " + " | ".join(f"{value:.1f}" for value in per_class.values()) + " |", ""]
    examples = run.path.parent / "examples.png"
    if examples.exists():
        copy = figures / f"examples_{run.name}.png"
        shutil.copyfile(examples, copy)
        lines += _link(copy, modelset, "test images with predictions")
    return lines


def _missing_section(runs):
    lines = ["## Not run yet", ""]
    for script in TASKS:
        if not any(run.script == script for run in runs):
            lines.append(f"- `{script}` ({TASKS[script]}): no results; run `python {script}`.")
            continue
        done = {entry["id"] for run in runs if run.script == script  # in any of its folders
                for entry in run.results["configs"]}
        missing = [f"config_{number}" for number in range(1, defined_configs(script) + 1)
                   if f"config_{number}" not in done]
        if missing:
            lines.append(f"- `{script}`: {', '.join(missing)} of its CONFIGS have no results "
                         f"in any folder; run `python {script} --configs "
                         f"{','.join(m.split('_')[1] for m in missing)}`.")
    if len(lines) == 2:
        lines.append("Every script and every config has results.")
    return lines + [""]
