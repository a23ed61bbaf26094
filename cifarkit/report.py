"""modelset/ -> modelset/REPORT.md and modelset/figures/: the report's tables and figures,
rebuilt from whatever results JSON files the scripts have written."""
import importlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

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


def load_runs(modelset):
    """{script: (results, path)} for every results JSON one folder below ``modelset``."""
    runs = {}
    for path in sorted(Path(modelset).glob("*/*.json")):
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(results, dict) and results.get("script") in TASKS:
            for entry in results.get("configs", []):  # fields that older files lack
                entry.setdefault("seed", results.get("seed", 0))
                last = entry["history"][-1] if entry.get("history") else {}
                entry.setdefault("final_train_accuracy", last.get("train_accuracy"))
            runs[results["script"]] = (results, path)
    return runs


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
    """Task 2: train − test accuracy per epoch, control beside regularised, per script."""
    plt = plots.pyplot()
    figure, panels = plt.subplots(1, len(task2_runs), figsize=(7 * len(task2_runs), 5),
                                  squeeze=False, sharey=True)
    for axes, (script, results) in zip(panels[0], task2_runs):
        plots.draw_config_curves(axes, _with_derived(results["configs"]), "gap", config_label)
        axes.axhline(0, color="grey", linewidth=0.8)
        axes.set(title=f"{TASKS[script]} ({script})", xlabel="epoch",
                 ylabel="generalisation gap: train − test accuracy (percentage points)")
        axes.grid(alpha=0.3)
        plots.add_legend(axes)
    figure.suptitle("Task 2: does regularisation shrink the gap between train and test accuracy?")
    return _save(figure, path)


def sweep_figure(results, path):
    """Task 3: final test accuracy and training time against lr, momentum and batch size."""
    plt = plots.pyplot()
    figure, grid = plt.subplots(2, 3, figsize=(15, 8))
    groups = plots.group_runs(results["configs"])
    for column, key in enumerate(("lr", "momentum", "batch_size")):
        for row, (value_key, label) in enumerate((("final_test_accuracy", "final test accuracy (%)"),
                                                  ("train_seconds", "training time (s)"))):
            axes = grid[row][column]
            for config_id, runs in groups.items():
                finished = [run for run in runs if run["status"] == "finished"]
                if not finished:
                    continue
                values = np.array([run[value_key] for run in finished])
                x = runs[0]["config"][key]
                axes.errorbar(x, values.mean(), yerr=values.std() if len(values) > 1 else None,
                              fmt="o", color=plots.color(config_id), capsize=3,
                              label=config_id)
                axes.annotate(config_id.split("_")[1], (x, values.mean()), fontsize=7,
                              xytext=(4, 4), textcoords="offset points")
            axes.set(xlabel=key + (" (log scale)" if key != "momentum" else ""), ylabel=label)
            if key != "momentum":
                axes.set_xscale("log")
            axes.grid(alpha=0.3)
    if grid[0][0].get_legend_handles_labels()[0]:
        grid[0][0].legend(fontsize=7)
    else:  # every config diverged or is unfinished: say so on the empty axes
        grid[0][0].text(0.5, 0.5, "no finished config", ha="center",
                        transform=grid[0][0].transAxes)
    figure.suptitle(f"Task 3: {results['script']}, each point a config (mean ± std over seeds)")
    return _save(figure, path)


def accuracy_time_figure(runs, path):
    """Task 4: test accuracy against training time, every LeNet and ResNet-18 config."""
    plt = plots.pyplot()
    figure, axes = plt.subplots(figsize=(10, 6))
    for script, (results, _) in runs.items():
        style = "-" if script == "Resnet_model.py" else "--"
        model = "ResNet-18" if script == "Resnet_model.py" else "LeNet"
        first_new = len(axes.lines)
        plots.draw_config_curves(axes, _with_derived(results["configs"]), "test_accuracy",
                                 lambda entry: f"{model} {Path(script).stem} {entry['id']}",
                                 x_key="elapsed")
        for line in axes.lines[first_new:]:
            line.set_linestyle(style)
    axes.set(title="Task 4: test accuracy against training time (solid: ResNet-18, dashed: LeNet)",
             xlabel="training time (s, cumulative)", ylabel="test accuracy (%)")
    axes.grid(alpha=0.3)
    plots.add_legend(axes)
    return _save(figure, path)


def best_run(results):
    finished = [entry for entry in results["configs"]
                if entry["status"] == "finished" and "confusion_matrix" in entry]
    return max(finished, key=lambda entry: entry["final_test_accuracy"], default=None)


def write_report(modelset):
    """Write REPORT.md and figures/ into ``modelset``; return the report's path."""
    modelset = Path(modelset)
    figures = modelset / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = load_runs(modelset)
    lines = [f"# CIFAR-10 report, regenerated from `{modelset}`", "",
             f"Written by `python make_report.py --modelset {modelset}` on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {len(runs)} results file(s). "
             "Accuracies are percentages on each run's test set; the gap is final training "
             "accuracy (measured during the last epoch, dropout on) minus final test accuracy, "
             "in percentage points. With several seeds a cell shows mean ± standard deviation.", ""]
    for script, task in TASKS.items():
        if script not in runs:
            continue
        results, path = runs[script]
        lines += [f"## {task} (`{script}`)", "",
                  f"From `{path.relative_to(modelset)}`: {results['data']['train_images']} "
                  f"training and {results['data']['test_images']} test images "
                  f"({results['data']['source']}); devices: {', '.join(results['devices'])}; "
                  f"world size {results.get('world_size', 1)}; seed {results['seed']}.", "",
                  summary_table(results), ""]
    lines += _figure_sections(runs, modelset, figures)
    lines += _missing_section(runs)
    report = modelset / "REPORT.md"
    text = "\n".join(lines) + "\n"
    write_atomically(report, lambda file: file.write(text.encode()))
    return report


def _link(path, modelset, caption):
    return [f"![{caption}]({path.relative_to(modelset).as_posix()})", ""]


def _figure_sections(runs, modelset, figures):
    lines = []
    task2 = [(script, runs[script][0]) for script in
             ("L2_regularization.py", "Dropout_regularization.py") if script in runs]
    if task2:
        lines += ["## Task 2: regularisation and the generalisation gap", ""]
        lines += _link(gap_figure(task2, figures / "task2_gap.png"), modelset,
                       "train-test gap per epoch")
        lines += ["| script | config | final gap (pp) | final test acc (%) |", "|---|---|---|---|"]
        for script, results in task2:
            for config_id, group in plots.group_runs(results["configs"]).items():
                finished = [run for run in group if run["status"] == "finished"]
                if finished:
                    lines.append(f"| {script} | {config_label(group[0])} | "
                                 f"{mean_std([_gap(run) for run in finished])} | "
                                 f"{mean_std([run['final_test_accuracy'] for run in finished])} |")
        lines.append("")
    if "Original_version_model_multiGPU.py" in runs:
        lines += ["## Task 3: learning rate, momentum and batch size", ""]
        lines += _link(sweep_figure(runs["Original_version_model_multiGPU.py"][0],
                                    figures / "task3_sweep.png"), modelset, "sweep")
    if "Resnet_model.py" in runs:
        lines += ["## Task 4: LeNet against ResNet-18, accuracy for time", ""]
        lines += _link(accuracy_time_figure(runs, figures / "task4_accuracy_vs_time.png"),
                       modelset, "accuracy against time")
    for script, (results, path) in runs.items():
        best = best_run(results)
        if best is None:
            continue
        lines += [f"## Best config of `{script}`: {config_label(best)} (seed {best['seed']})", ""]
        confusion = plots.confusion_figure(best["confusion_matrix"], CLASSES,
                                           f"{Path(script).stem}, {best['id']}: confusion matrix")
        lines += _link(_save(confusion, figures / f"confusion_{Path(script).stem}.png"),
                       modelset, "confusion matrix")
        per_class = best["per_class_accuracy"]
        lines += ["| " + " | ".join(per_class) + " |", "|" + "---|" * len(per_class),
                  "| " + " | ".join(f"{value:.1f}" for value in per_class.values()) + " |", ""]
        examples = path.parent / "examples.png"
        if examples.exists():
            copy = figures / f"examples_{Path(script).stem}.png"
            shutil.copyfile(examples, copy)
            lines += _link(copy, modelset, "test images with predictions")
    return lines


def _missing_section(runs):
    lines = ["## Not run yet", ""]
    for script in TASKS:
        if script not in runs:
            lines.append(f"- `{script}` ({TASKS[script]}): no results; run `python {script}`.")
            continue
        done = {entry["id"] for entry in runs[script][0]["configs"]}
        missing = [f"config_{number}" for number in range(1, defined_configs(script) + 1)
                   if f"config_{number}" not in done]
        if missing:
            lines.append(f"- `{script}`: {', '.join(missing)} of its CONFIGS have no results; "
                         f"run `python {script} --configs "
                         f"{','.join(m.split('_')[1] for m in missing)}`.")
    if len(lines) == 2:
        lines.append("Every script and every config has results.")
    return lines + [""]
