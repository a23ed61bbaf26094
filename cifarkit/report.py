"""modelset/ -> modelset/REPORT.md and modelset/figures/: the report's tables, figures and
sentences, rebuilt from the results JSON the scripts wrote (read and checked by results.py)."""
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import plots, store
from .results import (CLASSES, NAMING_KEYS, config_label, duration, group_runs, mean_std,
                      read_results, settings, write_atomically)

REPORT_HEADER = "# CIFAR-10 report, regenerated from"  # how make_report knows its own file
IGNORED = "ignored (it only names the config or quotes the report)"
MIXED_NOTE = "RUNS ON DIFFERENT NUMBERS OF IMAGES ARE SHOWN TOGETHER: compare with care"
RUNNING_NOTE = ("† no eval-mode training accuracy in this file (written before the kit "
                "recorded it): the running value is shown and used for the gap; it is measured "
                "while the weights change and with dropout on, so it understates the gap.")
# The report gives no numbers for Task 2; the other tasks quote the configs' reported_* keys.
TASK2_CLAIM = ("L2 weight decay (1e-4) and dropout (0.5) reduce overfitting, i.e. shrink the "
               "gap between training and test accuracy")
DATA_HELP = ("`DIR` is the folder holding your copy of CIFAR-10 (see docs/data.md, "
             "\"Data: downloaded, local, or offline\"); leave `--data-dir DIR` out to download "
             "it into `./data`.")
STRENGTHS = {"weight_decay": ("weight decay", 1e-4, True),  # Task 2's regularisers: axis name,
             "dropout": ("dropout probability", 0.5, False)}  # the report's strength, log axis
SWEEP_AXES = (("lr", "learning rate", True), ("momentum", "momentum", False),
              ("batch_size", "batch size", True))  # Task 3: key, axis name, log scale


def task_number(task):
    """3 for "Task 3: LeNet hyper-parameter sweep"; None for a task not named so."""
    found = re.match(r"Task (\d+):", task) if isinstance(task, str) else None
    return int(found.group(1)) if found else None


@dataclass
class Run:
    """One usable results JSON; ``name`` (its folder's, plus the file's where one folder holds
    two) labels its headings, legends and figure files, so no two overwrite each other."""
    path: Path
    results: dict
    name: str
    task: str  # its script's REPORT_TASK
    ignored: list = field(default_factory=list)  # naming fields of the wrong kind, dropped

    @property
    def script(self):
        return self.results["script"]

    @property
    def groups(self):
        """{config id: [finished entries, one per seed]}, configs with none left out."""
        return group_runs([entry for entry in self.results["configs"]
                           if entry["status"] == "finished"])

    @property
    def best(self):
        """The finished config with the highest mean final test accuracy: its entries, or []."""
        return max(self.groups.values(), key=lambda runs: _mean(runs, "final_test_accuracy"),
                   default=[])

    @property
    def images(self):
        data = self.results["data"]
        return f"{data['train_images']:,} training / {data['test_images']:,} test images"


def load_runs(modelset, scripts):
    """([Run], [(path, why it was skipped)]) for every results JSON one folder below
    ``modelset``, in the order of ``scripts`` ({script: (REPORT_TASK, configs)}), then folder."""
    found, skipped = [], []
    for path in sorted(Path(modelset).glob("*/[!.]*.json")):  # not hidden ones
        results, problem, ignored = read_results(path)
        if problem is None and results["script"] not in scripts:
            problem = f"not a results file of the kit's scripts ('script' is {results['script']!r})"
        if problem:
            skipped.append((path, problem))
        else:
            found.append((path, results, ignored))
    folders = [path.parent for path, _, _ in found]
    runs = [Run(path, results, path.parent.name + (
        "" if folders.count(path.parent) == 1 else f"_{path.stem}"),
        scripts[results["script"]][0], ignored) for path, results, ignored in found]
    return sorted(runs, key=lambda run: (list(scripts).index(run.script), run.name)), skipped


def train_eval(entry):
    """(final eval-mode training accuracy, whether it is the running one: an older file)."""
    last = entry["history"][-1] if entry["history"] else {}
    if last.get("train_accuracy_eval") is not None:
        return last["train_accuracy_eval"], False
    return entry["final_train_accuracy"], True


def _gap(entry):
    return train_eval(entry)[0] - entry["final_test_accuracy"]


def _mean(entries, key):
    return float(np.mean([entry[key] if isinstance(key, str) else key(entry)
                          for entry in entries]))


def _epochs(entries):
    return max(len(entry["history"]) for entry in entries)


def summary_table(results):
    """The 'Results summary' table of one script, a row per config (mean ± std over seeds),
    and the note on older files' training accuracy where one is needed."""
    rows, any_running = [
        "| config | settings | seeds | final test acc (%) | best test acc (%) | final train acc, "
        "eval mode (%) | final train acc, running (%) | gap train − test (pp) | training time "
        "(s) | device(s), precision | status |", "|---|---|---|---|---|---|---|---|---|---|---|"
    ], False
    for config_id, runs in group_runs(results["configs"]).items():
        finished = [run for run in runs if run["status"] == "finished"]
        running = any(train_eval(run)[1] for run in finished)
        any_running = any_running or running
        cells = [mean_std([measure(run) for run in finished]) if finished else "—" for measure in (
            lambda run: run["final_test_accuracy"], lambda run: run["best_test_accuracy"],
            lambda run: train_eval(run)[0], lambda run: run["final_train_accuracy"], _gap,
            lambda run: run["train_seconds"])]
        cells[2], cells[4] = ("—", cells[4] + " †") if running else (cells[2], cells[4])
        where = "; ".join([", ".join(results["devices"])]
                          + sorted({run["precision"] for run in runs if "precision" in run}))
        marks = ", ".join("**DIVERGED**" if status == "diverged" else status
                          for status in sorted({run["status"] for run in runs}))
        name = f" ({runs[0]['config']['name']})" if "name" in runs[0]["config"] else ""
        rows.append(" | ".join([f"| {config_id}{name}", settings(runs[0]["config"]),
                                str(len(runs))] + cells + [where, f"{marks} |"]))
    return "\n".join(rows + ([f"\n{RUNNING_NOTE}"] if any_running else []))


def _save(figure, path):
    content = plots.png_bytes(figure)
    write_atomically(path, lambda file: file.write(content))
    return path


def _finish(axes):
    plots.min_span(axes, plots.ACCURACY_SPAN)
    axes.grid(alpha=0.3)
    plots.add_legend(axes)


def _with_derived(entries):
    """Copies of the entries whose history also holds the gap and the elapsed seconds."""
    return [dict(entry, history=[dict(
        record, elapsed=float(seconds), gap=None if record.get("test_accuracy") is None
        else plots.values_of(record, "train_accuracy_eval") - record["test_accuracy"])
        for record, seconds in zip(entry["history"], np.cumsum(
            [record["seconds"] for record in entry["history"]]))]) for entry in entries]


def gap_figure(task_runs, path):
    """Task 2: train − test accuracy per epoch, control beside regularised, a panel per run."""
    figure, panels = plots.pyplot().subplots(
        1, len(task_runs), figsize=(7 * len(task_runs), 5.5), squeeze=False, sharey=True,
        layout="constrained")
    for axes, run in zip(panels[0], task_runs):
        entries = run.results["configs"]
        plots.draw_config_curves(axes, _with_derived(entries), "gap",
                                 plots.short_labels(entries))
        axes.axhline(0, color="grey", linewidth=0.8)
        axes.set(xlabel="epoch", ylabel="generalisation gap: train − test accuracy (points)")
        plots.titled(axes, f"{run.task} ({run.name})", plots.subtitle(run.results, entries)
                     + ("; RUNNING train accuracy (older file): gap understated"
                        if plots.uses_running(entries) else ""))
        plots.whole_epochs(axes, plots.last_epoch(entries))
        _finish(axes)
    figure.suptitle("Task 2: does regularisation shrink the gap between train and test accuracy?"
                    "\n(train accuracy in eval mode on a fixed sample of training images, "
                    "measured like the test accuracy)", fontsize=11)
    return _save(figure, path)


def strength_sweep(run):
    """(key, [(strength, [finished entries])]): the largest family of the run's configs that
    differ in one regulariser's strength alone, when it holds three strengths; else None."""
    for key in STRENGTHS:
        families = {}
        for finished in run.groups.values():
            config = finished[0]["config"]
            rest = json.dumps({name: value for name, value in config.items()
                               if name != key and name not in NAMING_KEYS}, sort_keys=True)
            families.setdefault(rest, {}).setdefault(float(config.get(key, 0.0)), []).extend(
                finished)
        family = max(families.values(), key=len, default={})
        if len(family) >= 3:
            return key, sorted(family.items())
    return None


def _strength_lines(run, modelset, figures):
    """For a run whose configs sweep one regulariser's strength: the final gap and test
    accuracy against it (mean ± std over seeds), and in words the smallest strength whose gap
    is below the control's (0) by more than the seeds' spread (the larger std)."""
    key, points = strength_sweep(run)
    name, chosen, log = STRENGTHS[key]
    strengths = [strength for strength, _ in points]
    smallest = min([strength for strength in strengths if strength > 0] + [chosen])
    x = [strength if strength > 0 or not log else smallest / 10 for strength in strengths]
    spreads = [[(np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0.0)
                for values in ([measure(entry) for entry in entries] for _, entries in points)]
               for measure in (_gap, lambda entry: entry["final_test_accuracy"])]
    figure, panels = plots.pyplot().subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for axes, spread, label in zip(panels, spreads, (
            "final gap: train (eval mode) − test (points)", "final test accuracy (%)")):
        axes.errorbar(x, [mean for mean, _ in spread], yerr=[std for _, std in spread],
                      marker="o", capsize=4, label="mean ± std over seeds")
        axes.axvline(chosen, color="grey", linestyle="--", label=f"the report's {name}: {chosen:g}")
        axes.set_xscale("log" if log else "linear")
        axes.set_xticks(x, [f"{strength:g}" for strength in strengths])
        axes.minorticks_off()
        axes.set(xlabel=f"{name} ({key})" + (" — 0 drawn at the far left" if log else ""),
                 ylabel=label)
        _finish(axes)
    figure.suptitle(f"{run.task} ({run.name}): how strong must it be?\n"
                    f"{plots.subtitle(run.results, points[0][1])}; seeds per strength: "
                    f"{', '.join(map(str, sorted({len(entries) for _, entries in points})))}",
                    fontsize=10)
    path = _save(figure, figures / f"task2_strength_{run.name}.png")
    lines = _link(path, modelset, f"{name} against the gap and test accuracy")
    if 0.0 not in strengths:
        return lines + _claim(f"{run.script} ({run.name}): the sweep has no control ({name} 0) "
                              f"to compare with.")
    (gap0, spread0), (test0, _) = (measures[strengths.index(0.0)] for measures in spreads)
    for strength, (gap, spread), (test, _) in zip(strengths, *spreads):
        if strength > 0 and gap0 - gap > max(spread0, spread):
            return lines + _claim(
                f"{run.script} ({run.name}): the smallest {name} whose gap is smaller than the "
                f"control's by more than the seeds' spread is {strength:g} ({gap:.2f} ± "
                f"{spread:.2f} against {gap0:.2f} ± {spread0:.2f} points), with a test accuracy "
                f"of {test:.2f}% against the control's {test0:.2f}%.")
    return lines + _claim(f"{run.script} ({run.name}): no {name} up to {max(strengths):g} makes "
                          f"the gap smaller than the control's ({gap0:.2f} ± {spread0:.2f} "
                          f"points) by more than the seeds' spread.")


def sweep_figure(sweep_runs, path):
    """Task 3: final test accuracy against lr, momentum and batch size, a row per run; in each
    panel a line joins the configs that differ only in that panel's setting."""
    figure, grid = plots.pyplot().subplots(len(sweep_runs), 3, figsize=(17, 6 * len(sweep_runs)),
                                           squeeze=False, layout="constrained")
    palette = plots.pyplot().get_cmap("tab10").colors
    for row, run in zip(grid, sweep_runs):
        groups = list(run.groups.values())
        configs = [runs[0]["config"] for runs in groups]
        for axes, (key, name, log) in zip(row, SWEEP_AXES):
            others = [other for other in plots.differing_keys(configs) if other != key]
            lines = {}
            for runs in groups:
                lines.setdefault(tuple((other, runs[0]["config"].get(other))
                                       for other in others), []).append(runs)
            for index, (line_key, members) in enumerate(lines.items()):
                members.sort(key=lambda runs: runs[0]["config"][key])
                finals = [[run["final_test_accuracy"] for run in runs] for runs in members]
                names = [runs[0]["config"]["name"] for runs in members
                         if "name" in runs[0]["config"]]
                axes.errorbar([runs[0]["config"][key] for runs in members],
                              [np.mean(values) for values in finals], capsize=3,
                              yerr=[np.std(values) for values in finals]
                              if max(map(len, finals)) > 1 else None,
                              color=palette[index % 10], **plots.line_style(index, 1),
                              label=", ".join(names) or ", ".join(
                                  f"{k}={v}" for k, v in line_key) or "all configs")
                reported = [(runs[0]["config"][key], runs[0]["config"]["reported_accuracy"])
                            for runs in members if "reported_accuracy" in runs[0]["config"]]
                if reported:
                    axes.plot(*zip(*reported), linestyle="none", marker="*", markersize=11,
                              color=palette[index % 10], alpha=0.7)
            values = sorted({config[key] for config in configs})
            if values:
                axes.set_xscale("log" if log else "linear")
                axes.set_xticks(values, [f"{value:g}" for value in values])  # only values run
                axes.minorticks_off()
                for label in axes.get_xticklabels() if len(values) > 5 else []:
                    label.set(rotation=45, ha="right")  # many values: tilted, not overlapping
            axes.set(xlabel=name + (" (log scale)" if log else ""),
                     ylabel="final test accuracy (%)")
            axes.set_title(f"final test accuracy against {name}", fontsize=10)
            plots.min_span(axes, plots.ACCURACY_SPAN)
            axes.grid(alpha=0.3)
            if lines:
                axes.plot([], [], linestyle="none", marker="*", color="grey", markersize=11,
                          label="the report's accuracy (50,000 training images)")
                axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        row[1].set_title(f"{run.name}: {plots.subtitle(run.results, run.results['configs'])}"
                         f"\nfinal test accuracy against {SWEEP_AXES[1][1]}", fontsize=10)
        if not groups:  # every config diverged or is unfinished: said on the empty axes
            row[0].text(0.5, 0.5, "no finished config", ha="center", transform=row[0].transAxes)
    figure.suptitle(f"Task 3 ({', '.join(sorted({run.script for run in sweep_runs}))}): final "
                    "test accuracy of each config; a line joins configs that differ only in the "
                    "setting on its x axis; ★ the report's accuracy for that config", fontsize=11)
    return _save(figure, path)


def _time_curve(entries):
    """(cumulative training seconds, test accuracy, its std) per epoch: means over seeds."""
    derived = _with_derived(entries)
    _, accuracy, std = plots.mean_curve(derived, "test_accuracy")
    return plots.mean_curve(derived, "elapsed")[1], accuracy, std


def _first_reach(curve, target):
    """(epoch, cumulative seconds) where a _time_curve first reaches ``target``, or None."""
    with np.errstate(invalid="ignore"):  # an epoch without a test accuracy never reaches it
        reached = np.flatnonzero(curve[1] >= target - 1e-9)  # 65.75 held as 65.7499999
    return (int(reached[0]) + 1, float(curve[0][reached[0]])) if len(reached) else None


def _time_figure(lines, stars, best, title, subtitle, corner):
    """Test accuracy against cumulative training time: per (label, entries of one config, line
    style) the mean over seeds, a ±1 std band, and a dot where it first reaches ``best``
    ((accuracy, config id): the report's best LeNet, drawn level); ``stars``: (seconds,
    accuracy, colour, label) the report measured; ``corner``: a note in the top left."""
    figure, axes = plots.pyplot().subplots(figsize=(11, 6.5))
    seconds = [star[0] for star in stars]
    for label, entries, style in lines:
        curve = _time_curve(entries)
        seconds += list(curve[0])
        axes.plot(curve[0], curve[1], label=label + (
            f" (mean of {len(entries)} seeds)" if len(entries) > 1 else ""), **style)
        if len(entries) > 1:
            axes.fill_between(curve[0], curve[1] - curve[2], curve[1] + curve[2], alpha=0.15,
                              color=style["color"],
                              label=f"{entries[0]['id']}: ±1 std over {len(entries)} seeds")
        reach = _first_reach(curve, best[0]) if best else None
        if reach:
            axes.plot(reach[1], curve[1][reach[0] - 1], marker="o", markersize=9, zorder=5,
                      color=style["color"], markeredgecolor="black", linestyle="none")
    for x, y, colour, label in stars:
        axes.plot(x, y, marker="*", markersize=13, linestyle="none", color=colour, label=label)
    if best:
        axes.axhline(best[0], color="black", linestyle=":", linewidth=1.3,
                     label=f"the report's best LeNet: {best[0]:g}% ({best[1]}, 50,000 "
                           "training images); a dot: where a line first reaches it")
        # at the left, where the curves are still low, so no curve hides it
        axes.text(0.005, best[0], f" the report's best LeNet: {best[0]:g}%", ha="left",
                  va="bottom", fontsize=9, transform=axes.get_yaxis_transform())
    if corner:
        axes.text(0.01, 0.99, corner, transform=axes.transAxes, va="top", fontsize=8,
                  color="darkred" if MIXED_NOTE in corner else "black")
    seconds = [value for value in seconds if value > 0]
    if seconds and max(seconds) / min(seconds) > 30:  # LeNet's seconds beside hours
        axes.set_xscale("log")
    axes.set(xlabel="training time (s, cumulative" + (", log scale)" if
                                                       axes.get_xscale() == "log" else ")"),
             ylabel="test accuracy (%)")
    plots.titled(axes, title, subtitle)
    _finish(axes)
    return figure


def _link(path, modelset, caption):
    return [f"![{caption}]({quote(path.relative_to(modelset).as_posix())})", ""]


def _claim(said):
    return [f"**Our runs against the report:** {said}", ""]


def _mixed_warning(runs):
    """A warning line when the runs of one table or figure used different image counts, or []."""
    if len({run.images for run in runs}) < 2:
        return []
    return [f"> **Warning: this compares runs on different numbers of images** ("
            + "; ".join(f"`{run.name}`: {run.images}" for run in runs) + "). Accuracies and gaps "
            "depend on the amount of data: compare runs of one size.", ""]


def _task1_section(task_runs, runs, modelset, figures):
    said = [f"in `{run.name}` the baseline reached {_mean(run.best, 'final_test_accuracy'):.1f}% "
            f"test accuracy after {_epochs(run.best)} epoch(s) on {run.images}"
            + (f"; the report: {run.best[0]['config']['reported_accuracy']:g}% (all 50,000 "
               f"training images)" if "reported_accuracy" in run.best[0]["config"] else "")
            for run in task_runs if run.best]
    return _claim("; ".join(said) + ".") if said else []


def _task2_section(task_runs, runs, modelset, figures):
    """The gap figure and table, a sentence per run on what each regulariser did to the gap
    against its control, and the strength figure of a run that sweeps one."""
    if not task_runs:
        return []
    lines = (["## Task 2: regularisation and the generalisation gap", ""]
             + _link(gap_figure(task_runs, figures / "task2_gap.png"), modelset,
                     "train-test gap per epoch") + _mixed_warning(task_runs)
             + ["| script | folder | config | final gap, eval mode (pp) | final gap, running (pp)"
                " | final test acc (%) | images (train / test) |", "|---|---|---|---|---|---|---|"])
    said, running = [], False
    for run in task_runs:
        groups, data = run.groups, run.results["data"]
        for entries in groups.values():
            old = any(train_eval(entry)[1] for entry in entries)
            running = running or old
            lines.append(f"| {run.script} | {run.name} | {config_label(entries[0])} | " + " | ".join(
                ["— †" if old else mean_std([_gap(entry) for entry in entries])] + [mean_std(
                    [entry[key] - entry["final_test_accuracy"] for entry in entries])
                    for key in ("final_train_accuracy",)]
                + [mean_std([entry["final_test_accuracy"] for entry in entries]),
                   f"{data['train_images']:,} / {data['test_images']:,} |"]))
        control = next((entries for entries in groups.values()
                        if entries[0]["config"].get("name") == "control"),
                       next(iter(groups.values()), None))
        parts = []
        for entries in groups.values() if len(groups) > 1 else []:
            if entries is control:
                continue
            gap, new_gap = _mean(control, _gap), _mean(entries, _gap)
            change = _mean(entries, "final_test_accuracy") - _mean(control, "final_test_accuracy")
            what = ", ".join(f"{key} {entries[0]['config'].get(key)}" for key in plots.differing_keys(
                [control[0]["config"], entries[0]["config"]])) or entries[0]["id"]
            parts.append(what + (f" left the gap at {gap:.1f} points " if round(new_gap, 1) == round(
                gap, 1) else f" {'narrowed' if new_gap < gap else 'widened'} the gap from "
                f"{gap:.1f} to {new_gap:.1f} points ") + (
                f"at a cost of {-change:.1f} points of test accuracy" if change < 0
                else f"and gained {change:.1f} points of test accuracy"))
        said += [f"in `{run.name}` ({run.images}, {_epochs(control)} epochs), "
                 + "; ".join(parts)] if parts else []
    lines += (["", RUNNING_NOTE] if running else []) + [""]
    lines += _claim("; ".join(said) + f"; the report: {TASK2_CLAIM}.") if said else []
    return lines + [line for run in task_runs if strength_sweep(run)
                    for line in _strength_lines(run, modelset, figures)]


def _task3_section(task_runs, runs, modelset, figures):
    """The sweep figure, accuracy against time to the report's best LeNet (the highest
    reported_accuracy among the configs run), and per run our best config beside the
    report's and how soon the configs first reach that LeNet."""
    if not task_runs:
        return []
    lines = (["## Task 3: learning rate, momentum and batch size", ""]
             + _link(sweep_figure(task_runs, figures / "task3_sweep.png"), modelset, "sweep"))
    best = max(((entry["config"]["reported_accuracy"], entry["id"]) for run in task_runs
                for entry in run.results["configs"] if "reported_accuracy" in entry["config"]),
               default=None)
    shown = [run for run in task_runs if run.groups]
    if shown:
        mixed, offset, curves = len({run.images for run in shown}) > 1, 0, []
        differing = plots.differing_keys([entries[0]["config"] for run in shown
                                          for entries in run.groups.values()])
        for run in shown:
            for index, (config_id, entries) in enumerate(run.groups.items(), start=offset):
                curves.append(((f"{run.name}: " if len(shown) > 1 else "") + plots.legend_label(
                    config_id, entries[0]["config"], differing) + (
                    f" [{run.results['data']['train_images']:,} images]" if mixed else ""),
                    entries, dict(plots.line_style(index, _epochs(entries)),
                                  color=plots.color(config_id))))
            offset += len(run.groups)
        subtitle = plots.subtitle(shown[0].results, [entry for entries in shown[0].groups.values()
                                                     for entry in entries]) \
            if len(shown) == 1 else (f"folders {', '.join(run.name for run in shown)}; each "
                                     "timed on its own device(s)")
        figure = _time_figure(curves, [], best, "Task 3: test accuracy against training time, "
                              "every finished config", subtitle, MIXED_NOTE if mixed else None)
        lines += _link(_save(figure, figures / "task3_accuracy_vs_time.png"), modelset,
                       "test accuracy against training time")
    lines += _mixed_warning(task_runs)
    said, timed = [], []
    for run in shown:
        groups = run.groups

        def describe(config_id):
            config = groups[config_id][0]["config"]
            return (f"{config_id} (lr {config['lr']:g}, momentum {config['momentum']:g}, "
                    f"batch {config['batch_size']})")
        ours = max(groups, key=lambda config_id: _mean(groups[config_id], "final_test_accuracy"))
        reported = {config_id: entries[0]["config"]["reported_accuracy"]
                    for config_id, entries in groups.items()
                    if "reported_accuracy" in entries[0]["config"]}
        theirs = max(reported, key=reported.get, default=None)
        said.append(f"in `{run.name}` ({run.images}, {_epochs(groups[ours])} epochs) the best of "
                    f"{len(groups)} finished configs is {describe(ours)} at "
                    f"{_mean(groups[ours], 'final_test_accuracy'):.1f}%" + (
                        f"; the report's best of the same configs: {describe(theirs)} at "
                        f"{reported[theirs]:g}%" + (" (the same config)" if theirs == ours else "")
                        if theirs else ""))
        timed += [_time_sentence(run, best)] if best else []
    return (lines + (_claim("; ".join(said) + ".") if said else [])
            + ([f"**Time to the report's best LeNet, {best[0]:g}% (its {best[1]}, all 50,000 "
                f"training images):** " + " ".join(timed), ""] if timed else []))


def _time_sentence(run, best):
    """How soon the run's finished configs first reach ``best`` ((accuracy, config id)): the
    fastest two (the closest when none does), the report's best config, and how many do."""
    groups = run.groups
    curves = {config_id: _time_curve(entries) for config_id, entries in groups.items()}
    reaches = {config_id: _first_reach(curve, best[0]) for config_id, curve in curves.items()}
    fastest = sorted((config_id for config_id in groups if reaches[config_id]),
                     key=lambda config_id: reaches[config_id][1])
    told = fastest[:2] or [max(curves, key=lambda config_id: np.nanmax(curves[config_id][1]))]
    told += [best[1]] if best[1] in groups and best[1] not in told else []
    parts = []
    for config_id in told:
        config, epochs, reach = groups[config_id][0]["config"], _epochs(groups[config_id]), \
            reaches[config_id]
        named = (config_id + (f" ({config['name']})" if "name" in config else "")
                 + (" (the report's best config)" if config_id == best[1] else ""))
        parts.append(f"{named} first reaches it after {duration(reach[1])} of training (epoch "
                     f"{reach[0]} of {epochs})" if reach else f"{named} does not reach it (its "
                     f"best: {np.nanmax(curves[config_id][1]):.1f}% in {epochs} epochs)")
    seeds = max(len(entries) for entries in groups.values())
    return (f"In `{run.name}` ({run.images}, {', '.join(run.results['devices'])}"
            + (f"; means over up to {seeds} seeds" if seeds > 1 else "") + "), " + "; ".join(
                parts + [f"{len(fastest)} of {len(groups)} finished configs "
                         + ("reaches it" if len(fastest) == 1 else "reach it")]) + ".")


def _task4_section(task_runs, runs, modelset, figures):
    """Test accuracy against training time for the best config of every run, coloured by
    script (ResNet-18 solid, LeNet dashed), and the best of each beside the report's."""
    if not task_runs:
        return []
    shown = [run for run in runs if run.best]
    mixed, scripts = len({run.images for run in shown}) > 1, list(
        dict.fromkeys(run.script for run in shown))
    differing = plots.differing_keys([run.best[0]["config"] for run in shown])
    palette = plots.pyplot().get_cmap("tab10").colors
    curves, stars = [], []
    for index, run in enumerate(shown):
        config, colour = run.best[0]["config"], palette[scripts.index(run.script) % 10]
        curves.append((f"{'ResNet-18' if run in task_runs else 'LeNet'} {run.name}: "
                       + plots.legend_label(run.best[0]["id"], config, differing) + (
                           f" [{run.results['data']['train_images']:,} images]" if mixed else ""),
                       run.best, dict(plots.line_style(index, _epochs(run.best)), color=colour,
                                      linestyle="-" if run in task_runs else "--")))
        if {"reported_seconds", "reported_accuracy"} <= config.keys():
            stars.append((config["reported_seconds"], config["reported_accuracy"], colour,
                          f"the report's {run.best[0]['id']}, on one A100 (50,000 images): "
                          f"other hardware, its time not comparable with ours"))
    figure = _time_figure(curves, stars, None, "Task 4: test accuracy against training time",
                          None, "the best config of each folder; colour: script; solid: "
                          "ResNet-18, dashed: LeNet" + (f"\n{MIXED_NOTE}" if mixed else ""))
    lines = (["## Task 4: LeNet against ResNet-18, accuracy for time", ""] + _link(
        _save(figure, figures / "task4_accuracy_vs_time.png"), modelset, "accuracy against time")
        + _mixed_warning(shown))
    resnet = [run for run in shown if run in task_runs]
    if not resnet:
        return lines
    said = [f"{model}'s best here is {run.best[0]['id']} of `{run.name}` at "
            f"{_mean(run.best, 'final_test_accuracy'):.1f}% in "
            f"{_mean(run.best, 'train_seconds'):.0f} s ({run.images}, {_epochs(run.best)} "
            f"epoch(s), {', '.join(run.results['devices'])})"
            for model, pool in (("ResNet-18", resnet), ("LeNet", [run for run in shown
                                                                  if run not in task_runs]))
            for run in sorted(pool, key=lambda run: -_mean(run.best, "final_test_accuracy"))[:1]]
    reported = [run.best[0]["config"] for run in resnet  # a point needs both figures
                if {"reported_seconds", "reported_accuracy"} <= run.best[0]["config"].keys()]
    lenet = [entry["config"]["reported_accuracy"] for run in runs if run not in task_runs
             for entry in run.results["configs"] if "reported_accuracy" in entry["config"]]
    if reported:
        config = max(reported, key=lambda config: config["reported_accuracy"])
        said.append(f"the report: ResNet-18 ({config['lr']:g} lr, {config['momentum']:g} "
                    f"momentum) {config['reported_accuracy']:g}% in {config['reported_seconds']:g}"
                    f" s on one A100" + (f", against {max(lenet):g}% for the report's best LeNet "
                                         f"among the configs we ran" if lenet else ""))
    return lines + _claim("; ".join(said) + ".")


def _earlier_section(run, modelset, figures):
    """Each config whose folder keeps earlier runs of it (same script, base seed and config
    name, or id when unnamed) not shown now: their test accuracy beside its run now."""
    folder, base, lines = run.path.parent, run.results["seed"], []
    records = store.runs(folder)
    for entry in run.results["configs"]:
        shown = folder / entry["run"] if isinstance(entry.get("run"), str) else None
        if entry["seed"] != base or shown not in records:
            continue
        name, current = entry["config"].get("name"), records[shown]
        earlier = [record for run_dir, record in records.items()
                   if run_dir != shown and record["seed"] == base and record["history"]
                   and record["identity"].get("script") == run.script
                   and (record["config"].get("name") == name if name is not None else
                        "name" not in record["config"] and record.get("label") == entry["id"])]
        if not earlier:
            continue
        said, plt = [], plots.pyplot()
        figure, axes = plt.subplots(figsize=(9, 5.5))
        for record in [*earlier, current]:
            was, now = (store.config_identity(one["identity"].get("config") or {}, {})
                        for one in (record, current))
            change = store.describe_change(was, now) or (
                "the model changed" if record["identity"].get("model")
                != current["identity"].get("model") else "the same config, trained again "
                                                         "(--restart)")
            last = record["history"][-1]
            said.append(f"{last['test_accuracy']:.2f}% after {last['epoch']} epoch(s)" + (
                "" if record["status"] == "finished" else f" ({record['status']})"))
            said[-1] = said[-1] if record is current else f"{change}: {said[-1]}"
            axes.plot([point["epoch"] for point in record["history"]],
                      [point["test_accuracy"] for point in record["history"]],
                      marker="o" if len(record["history"]) == 1 else None, **(
                          dict(color="black", linewidth=2, label=f"now: {entry['id']}")
                          if record is current else
                          dict(alpha=0.8, linestyle="--", label=f"earlier ({change})")))
        axes.set(title=f"{Path(run.script).stem}: {entry['id']}, earlier runs and now",
                 xlabel="epoch", ylabel="test accuracy (%)")
        plots.whole_epochs(axes, max(len(record["history"]) for record in [*earlier, current]))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        path = _save(figure, figures / f"{run.name}_{entry['id']}_earlier.png")
        lines += [f"**{entry['id']}, earlier runs** (kept in `{folder.name}/runs/`): "
                  f"{'; '.join(said[:-1])}; now {said[-1]}.", ""]
        lines += _link(path, modelset, f"{entry['id']}: earlier runs and now")
    return lines


def _run_section(run, modelset, figures):
    """A run's heading and summary table, its best config's confusion matrix, per-class
    accuracy and example predictions, and its configs' earlier runs."""
    data = run.results["data"]
    lines = [f"## {run.task} (`{run.script}`), `{run.name}`", "",
             f"From `{run.path.relative_to(modelset)}`: {data['train_images']:,} training and "
             f"{data['test_images']:,} test images ({data['source']}); devices: "
             f"{', '.join(run.results['devices'])}; world size "
             f"{run.results.get('world_size', 1)}; seed {run.results['seed']}.", "",
             summary_table(run.results), ""]
    best = max((entry for entries in run.groups.values() for entry in entries
                if "confusion_matrix" in entry),
               key=lambda entry: entry["final_test_accuracy"], default=None)
    if best is not None:
        per_class = best["per_class_accuracy"]
        lines += [f"### Best config of `{run.script}` in `{run.name}`: {config_label(best)} "
                  f"(seed {best['seed']})", ""] + _link(_save(plots.confusion_figure(
                      best["confusion_matrix"], CLASSES, f"{run.name}, {best['id']}: confusion "
                      f"matrix"), figures / f"confusion_{run.name}.png"), modelset,
                      "confusion matrix") + [
            "| " + " | ".join(per_class) + " |", "|" + "---|" * len(per_class),
            "| " + " | ".join(f"{value:.1f}" for value in per_class.values()) + " |", ""]
        examples = run.path.parent / "examples.png"
        if examples.is_file():  # not a pipe or folder of that name: copying one hangs or fails
            shutil.copyfile(examples, figures / f"examples_{run.name}.png")
            lines += _link(figures / f"examples_{run.name}.png", modelset,
                           "test images with predictions")
    return lines + _earlier_section(run, modelset, figures)


def rerun_command(run, numbers):
    """The command that trains configs ``numbers`` into ``run``'s folder with its earlier
    flags (data as recorded, subset, epochs, seeds), so the results there stay in the views."""
    words = run.results.get("command", "").split()
    flags = " ".join(words[words.index(run.script) + 1:] if run.script in words else [])
    flags = re.sub(r"(?<!\S)--(configs|out)(=| +)\S+|(?<!\S)--restart(?!\S)", "", flags).split()
    world = run.results.get("world_size", 1)
    return " ".join([f"torchrun --standalone --nproc-per-node={world}" if world > 1 else "python",
                     run.script, *flags, "--out", str(run.path.parent), "--configs",
                     ",".join(numbers)])


def write_report(modelset, runs, skipped, scripts):
    """Write REPORT.md and figures/ into ``modelset`` from load_runs' runs and skipped files,
    in task order; ``scripts``: {script: (its REPORT_TASK, how many configs its CONFIGS
    holds)}. Returns the report's path; an OSError means a file could not be written."""
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
    if skipped:
        lines += (["## Skipped results files", "", "Left out of every table and figure below; "
                   "once each is mended as said, rerun.", ""]
                  + [f"- `{path.relative_to(modelset)}`: {why}." for path, why in skipped] + [""])
    ignored = [f"- `{run.path.relative_to(modelset)}`: {why}; {IGNORED}."
               for run in runs for why in run.ignored]
    if ignored:
        lines += ["## Ignored fields", "", "Their results are reported without them; fix or "
                  "remove the fields and rerun to see them.", ""] + ignored + [""]
    sections = {1: _task1_section, 2: _task2_section, 3: _task3_section, 4: _task4_section}
    for number in sorted(set(sections) | {task_number(run.task) for run in runs}):
        task_runs = [run for run in runs if task_number(run.task) == number]
        for run in task_runs:
            lines += _run_section(run, modelset, figures)
        lines += sections[number](task_runs, runs, modelset, figures) if number in sections else []
    missing = []
    for script, (task, defined) in scripts.items():
        own = [run for run in runs if run.script == script]
        done = {entry["id"] for run in own for entry in run.results["configs"]}
        numbers = [str(number) for number in range(1, defined + 1)
                   if f"config_{number}" not in done]  # in none of its folders
        missing += [f"- `{script}` ({task}): no results; run `python {script} --data-dir DIR`."
                    ] if not own else [
            f"- `{script}`: config(s) {', '.join(numbers)} of its CONFIGS have no results in any "
            f"folder; to add them beside the results of `{own[-1].name}` (same data and flags, "
            f"so nothing is moved aside): `{rerun_command(own[-1], numbers)}`."] if numbers else []
    lines += ["## Not run yet", ""] + ([DATA_HELP, ""] + missing if missing else [
        "Every script and every config has results.", ""]) + [""]
    report = modelset / "REPORT.md"
    text = "\n".join(lines) + "\n"
    write_atomically(report, lambda file: file.write(text.encode()))
    return report
