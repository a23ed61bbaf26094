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
    """One usable results JSON; ``name`` (the folder's, plus the file's where a folder holds
    two) labels its headings, legends and figure files, so that none overwrites another."""
    path: Path
    results: dict
    name: str
    task: str  # its script's REPORT_TASK
    ignored: list = field(default_factory=list)  # naming fields of the wrong kind, dropped

    def __post_init__(self):
        self.script, data = self.results["script"], self.results["data"]
        self.images = f"{data['train_images']:,} training / {data['test_images']:,} test images"
        self.groups = group_runs([entry for entry in self.results["configs"]  # finished ones,
                                  if entry["status"] == "finished"])  # {config id: [a seed's]}
        self.best = max(self.groups.values(), default=[],  # the best config's entries
                        key=lambda entries: _mean(entries, "final_test_accuracy"))


def load_runs(modelset, scripts):
    """([Run], [(path, why it was skipped)]) for every results JSON one folder below
    ``modelset``, in the order of ``scripts`` ({script: (REPORT_TASK, configs)}), then folder."""
    found, skipped = [], []
    for path in sorted(Path(modelset).glob("*/[!.]*.json")):  # not hidden ones
        results, problem, ignored = read_results(path)
        if problem is None and results["script"] not in scripts:
            problem = (f"not a results file of the kit's scripts ('script' is "
                       f"{results['script']!r})")
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
    """(a finished entry's final eval-mode training accuracy, whether it is the running one
    instead: files written before the eval-mode value was recorded)."""
    value = entry["history"][-1].get("train_accuracy_eval")
    return (entry["final_train_accuracy"], True) if value is None else (value, False)


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
        measures = (lambda run: run["final_test_accuracy"], lambda run: run["best_test_accuracy"],
                    lambda run: train_eval(run)[0], lambda run: run["final_train_accuracy"], _gap,
                    lambda run: run["train_seconds"])
        cells = [mean_std(list(map(measure, finished))) if finished else "—"
                 for measure in measures]
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
    """The final gap and test accuracy against the strength a run sweeps (mean ± std over
    seeds), and the smallest strength whose gap is below the control's (0) by more than the
    seeds' spread (the larger std), in words."""
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
        axes.axvline(chosen, color="grey", linestyle="--",
                     label=f"the report's {name}: {chosen:g}")
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
    lines = _link(_save(figure, figures / f"task2_strength_{run.name}.png"), modelset,
                  f"{name} against the gap and test accuracy")
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
    plt = plots.pyplot()
    figure, grid = plt.subplots(len(sweep_runs), 3, figsize=(17, 6 * len(sweep_runs)),
                                squeeze=False, layout="constrained")
    for row, run in zip(grid, sweep_runs):
        configs = [entries[0]["config"] for entries in run.groups.values()]
        for axes, (key, name, log) in zip(row, SWEEP_AXES):
            others = [other for other in plots.differing_keys(configs) if other != key]
            lines = {}
            for entries in run.groups.values():
                lines.setdefault(tuple((other, entries[0]["config"].get(other))
                                       for other in others), []).append(entries)
            for index, (line_key, members) in enumerate(lines.items()):
                members.sort(key=lambda entries: entries[0]["config"][key])
                finals = [[entry["final_test_accuracy"] for entry in entries]
                          for entries in members]
                names = [entries[0]["config"]["name"] for entries in members
                         if "name" in entries[0]["config"]]
                colour = plt.get_cmap("tab10").colors[index % 10]
                axes.errorbar([entries[0]["config"][key] for entries in members],
                              [np.mean(values) for values in finals], capsize=3, color=colour,
                              yerr=[np.std(values) for values in finals]
                              if max(map(len, finals)) > 1 else None,
                              label=", ".join(names) or ", ".join(
                                  f"{k}={v}" for k, v in line_key) or "all configs",
                              **plots.line_style(index, 1))
                reported = [(entries[0]["config"][key], entries[0]["config"]["reported_accuracy"])
                            for entries in members if "reported_accuracy" in entries[0]["config"]]
                if reported:
                    axes.plot(*zip(*reported), linestyle="none", marker="*", markersize=11,
                              color=colour, alpha=0.7)
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
        if not configs:  # every config diverged or is unfinished: said on the empty axes
            row[0].text(0.5, 0.5, "no finished config", ha="center", transform=row[0].transAxes)
    figure.suptitle(f"Task 3 ({', '.join(sorted({run.script for run in sweep_runs}))}): final "
                    "test accuracy of each config; a line joins configs that differ only in the "
                    "setting on its x axis; ★ the report's accuracy for that config",
                    fontsize=11)
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


def _time_figure(curves, stars, best, title, subtitle, corner):
    """Test accuracy against cumulative training time, a line per (label prefix, run, entries
    of one config, style): the mean over seeds, a ±1 std band, a dot where it first reaches
    ``best`` ((accuracy, config id), drawn level); ``stars``: (seconds, accuracy, colour,
    label) the report measured; ``corner``: a note at the top left."""
    figure, axes = plots.pyplot().subplots(figsize=(11, 6.5))
    mixed = len({run.images for _, run, _, _ in curves}) > 1
    differing = plots.differing_keys([entries[0]["config"] for _, _, entries, _ in curves])
    seconds = [star[0] for star in stars]
    for index, (prefix, run, entries, style) in enumerate(curves):
        (x, y, std), seeds = _time_curve(entries), len(entries)
        style, seconds = dict(plots.line_style(index, len(x)), **style), seconds + list(x)
        axes.plot(x, y, **style, label=prefix + plots.legend_label(
            entries[0]["id"], entries[0]["config"], differing)
            + (f" [{run.results['data']['train_images']:,} images]" if mixed else "")
            + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
        if seeds > 1:
            axes.fill_between(x, y - std, y + std, color=style["color"], alpha=0.15,
                              label=f"{entries[0]['id']}: ±1 std over {seeds} seeds")
        reach = _first_reach((x, y, std), best[0]) if best else None
        if reach:
            axes.plot(reach[1], y[reach[0] - 1], marker="o", markersize=9, zorder=5,
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
    corner = "\n".join(note for note in (corner, MIXED_NOTE if mixed else None) if note)
    axes.text(0.01, 0.99, corner, transform=axes.transAxes, va="top", fontsize=8,
              color="darkred" if mixed else "black")
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
                " | final test acc (%) | images (train / test) |",
                "|---|---|---|---|---|---|---|"])
    running = False
    for run in task_runs:
        for entries in run.groups.values():
            old = any(train_eval(entry)[1] for entry in entries)
            running = running or old
            lines.append(" | ".join([
                f"| {run.script}", run.name, config_label(entries[0]),
                "— †" if old else mean_std([_gap(entry) for entry in entries]),
                mean_std([e["final_train_accuracy"] - e["final_test_accuracy"] for e in entries]),
                mean_std([entry["final_test_accuracy"] for entry in entries]),
                f"{run.results['data']['train_images']:,} / "
                f"{run.results['data']['test_images']:,} |"]))
    said = [sentence for sentence in map(_gap_sentence, task_runs) if sentence]
    lines += (["", RUNNING_NOTE] if running else []) + [""]
    lines += _claim("; ".join(said) + f"; the report: {TASK2_CLAIM}.") if said else []
    return lines + [line for run in task_runs if strength_sweep(run)
                    for line in _strength_lines(run, modelset, figures)]


def _gap_sentence(run):
    """What each regularised config did to the gap against the run's control, in words."""
    groups = list(run.groups.values())
    control = next((entries for entries in groups if entries[0]["config"].get("name")
                    == "control"), groups[0] if groups else None)
    if control is None:
        return None
    gap, parts = _mean(control, _gap), []
    for entries in [entries for entries in groups if entries is not control]:
        new_gap = _mean(entries, _gap)
        change = _mean(entries, "final_test_accuracy") - _mean(control, "final_test_accuracy")
        what = ", ".join(f"{key} {entries[0]['config'].get(key)}" for key in plots.differing_keys(
            [control[0]["config"], entries[0]["config"]])) or entries[0]["id"]
        moved = (f"left the gap at {gap:.1f} points" if round(new_gap, 1) == round(gap, 1) else
                 f"{'narrowed' if new_gap < gap else 'widened'} the gap from {gap:.1f} to "
                 f"{new_gap:.1f} points")
        parts.append(f"{what} {moved} " + (f"at a cost of {-change:.1f} points of test accuracy"
                                           if change < 0 else
                                           f"and gained {change:.1f} points of test accuracy"))
    return (f"in `{run.name}` ({run.images}, {_epochs(control)} epochs), " + "; ".join(parts)
            if parts else None)


def _task3_section(task_runs, runs, modelset, figures):
    """The sweep figure; accuracy against time with the report's best LeNet (the highest
    reported_accuracy among the configs run); per run our best config beside the report's
    and how soon the configs first reach that LeNet."""
    if not task_runs:
        return []
    lines = (["## Task 3: learning rate, momentum and batch size", ""]
             + _link(sweep_figure(task_runs, figures / "task3_sweep.png"), modelset, "sweep"))
    best = max(((entry["config"]["reported_accuracy"], entry["id"]) for run in task_runs
                for entry in run.results["configs"] if "reported_accuracy" in entry["config"]),
               default=None)
    shown = [run for run in task_runs if run.groups]
    if shown:
        figure = _time_figure(
            [(f"{run.name}: " if len(shown) > 1 else "", run, entries,
              {"color": plots.color(config_id)})
             for run in shown for config_id, entries in run.groups.items()], [], best,
            "Task 3: test accuracy against training time, every finished config",
            plots.subtitle(shown[0].results, [entry for entries in shown[0].groups.values()
                                              for entry in entries])
            if len(shown) == 1 else f"folders {', '.join(run.name for run in shown)}; each "
            "timed on its own device(s)", None)
        lines += _link(_save(figure, figures / "task3_accuracy_vs_time.png"), modelset,
                       "test accuracy against training time")
    said = []
    for run in shown:
        configs = {config_id: entries[0]["config"] for config_id, entries in run.groups.items()}
        described = {config_id: f"{config_id} (lr {config['lr']:g}, momentum "
                                f"{config['momentum']:g}, batch {config['batch_size']})"
                     for config_id, config in configs.items()}
        ours = run.best[0]["id"]
        theirs = max((config_id for config_id in configs if "reported_accuracy"
                      in configs[config_id]), default=None,
                     key=lambda config_id: configs[config_id]["reported_accuracy"])
        said.append(f"in `{run.name}` ({run.images}, {_epochs(run.best)} epochs) the best of "
                    f"{len(configs)} finished configs is {described[ours]} at "
                    f"{_mean(run.best, 'final_test_accuracy'):.1f}%" + (
                        f"; the report's best of the same configs: {described[theirs]} at "
                        f"{configs[theirs]['reported_accuracy']:g}%"
                        + (" (the same config)" if theirs == ours else "") if theirs else ""))
    timed = [_time_sentence(run, best) for run in shown] if best else []
    return (lines + _mixed_warning(task_runs) + (_claim("; ".join(said) + ".") if said else [])
            + ([f"**Time to the report's best LeNet, {best[0]:g}% (its {best[1]}, all 50,000 "
                f"training images):** " + " ".join(timed), ""] if timed else []))


def _time_sentence(run, best):
    """How soon the run's finished configs first reach ``best`` ((accuracy, config id)): the
    fastest two (the closest when none does), the report's best config, and how many do."""
    curves = {config_id: _time_curve(entries) for config_id, entries in run.groups.items()}
    reaches = {config_id: _first_reach(curve, best[0]) for config_id, curve in curves.items()}
    fastest = sorted((config_id for config_id in curves if reaches[config_id]),
                     key=lambda config_id: reaches[config_id][1])
    told = fastest[:2] or [max(curves, key=lambda config_id: np.nanmax(curves[config_id][1]))]
    parts, seeds = [], max(len(entries) for entries in run.groups.values())
    for config_id in told + ([best[1]] if best[1] in curves and best[1] not in told else []):
        config, epochs = run.groups[config_id][0]["config"], _epochs(run.groups[config_id])
        named = (config_id + (f" ({config['name']})" if "name" in config else "")
                 + (" (the report's best config)" if config_id == best[1] else ""))
        reach = reaches[config_id]
        parts.append(f"{named} first reaches it after {duration(reach[1])} of training (epoch "
                     f"{reach[0]} of {epochs})" if reach else f"{named} does not reach it (its "
                     f"best: {np.nanmax(curves[config_id][1]):.1f}% in {epochs} epochs)")
    parts.append(f"{len(fastest)} of {len(curves)} finished configs reach"
                 + ("es it" if len(fastest) == 1 else " it"))
    return (f"In `{run.name}` ({run.images}, {', '.join(run.results['devices'])}"
            + (f"; means over up to {seeds} seeds" if seeds > 1 else "") + "), "
            + "; ".join(parts) + ".")


def _task4_section(task_runs, runs, modelset, figures):
    """Test accuracy against training time for the best config of every run, coloured by
    script (ResNet-18 solid, LeNet dashed), and the best of each beside the report's."""
    if not task_runs:
        return []
    shown = [run for run in runs if run.best]
    scripts, palette = list(dict.fromkeys(run.script for run in shown)), plots.pyplot().get_cmap(
        "tab10").colors
    curves = [(f"{'ResNet-18' if run in task_runs else 'LeNet'} {run.name}: ", run, run.best,
               {"color": palette[scripts.index(run.script) % 10],
                "linestyle": "-" if run in task_runs else "--"}) for run in shown]
    stars = [(run.best[0]["config"]["reported_seconds"],
              run.best[0]["config"]["reported_accuracy"], style["color"],
              f"the report's {run.best[0]['id']}, on one A100 (50,000 images): other hardware, "
              f"its time not comparable with ours") for _, run, _, style in curves
             if {"reported_seconds", "reported_accuracy"} <= run.best[0]["config"].keys()]
    figure = _time_figure(curves, stars, None, "Task 4: test accuracy against training time",
                          None, "the best config of each folder; colour: script; solid: "
                          "ResNet-18, dashed: LeNet")
    lines = (["## Task 4: LeNet against ResNet-18, accuracy for time", ""] + _link(
        _save(figure, figures / "task4_accuracy_vs_time.png"), modelset, "accuracy against time")
        + _mixed_warning(shown))
    said = [f"{model}'s best here is {run.best[0]['id']} of `{run.name}` at "
            f"{_mean(run.best, 'final_test_accuracy'):.1f}% in "
            f"{_mean(run.best, 'train_seconds'):.0f} s ({run.images}, {_epochs(run.best)} "
            f"epoch(s), {', '.join(run.results['devices'])})"
            for model, pool in (("ResNet-18", [run for run in shown if run in task_runs]),
                                ("LeNet", [run for run in shown if run not in task_runs]))
            for run in sorted(pool, key=lambda run: -_mean(run.best, "final_test_accuracy"))[:1]]
    reported = [run.best[0]["config"] for _, run, _, _ in curves if run in task_runs
                and {"reported_seconds", "reported_accuracy"} <= run.best[0]["config"].keys()]
    lenet = [entry["config"]["reported_accuracy"] for run in runs if run not in task_runs
             for entry in run.results["configs"] if "reported_accuracy" in entry["config"]]
    if reported:
        config = max(reported, key=lambda config: config["reported_accuracy"])
        said.append(f"the report: ResNet-18 ({config['lr']:g} lr, {config['momentum']:g} "
                    f"momentum) {config['reported_accuracy']:g}% in {config['reported_seconds']:g}"
                    f" s on one A100" + (f", against {max(lenet):g}% for the report's best LeNet "
                                         f"among the configs we ran" if lenet else ""))
    return lines + (_claim("; ".join(said) + ".") if any(run in task_runs for run in shown)
                    else [])


def _earlier_section(run, modelset, figures):
    """Each config whose folder keeps earlier runs of it not shown now (same script, base seed
    and config name, or id when unnamed): their test accuracy beside its run now."""
    folder, base, lines = run.path.parent, run.results["seed"], []
    records = store.runs(folder)
    for entry in run.results["configs"]:
        shown = folder / entry["run"] if isinstance(entry.get("run"), str) else None
        name, current = entry["config"].get("name"), records.get(shown)
        earlier = [record for run_dir, record in records.items()
                   if run_dir != shown and record["seed"] == base and record["history"]
                   and record["identity"].get("script") == run.script
                   and (record["config"].get("name") == name if name is not None else
                        "name" not in record["config"] and record.get("label") == entry["id"])]
        if entry["seed"] != base or current is None or not earlier:
            continue
        figure, axes = plots.pyplot().subplots(figsize=(9, 5.5))
        said = []
        for record in [*earlier, current]:
            was, now = (store.config_identity(one["identity"].get("config") or {}, {})
                        for one in (record, current))
            change = store.describe_change(was, now) or (
                "the model changed" if record["identity"].get("model")
                != current["identity"].get("model") else "the same config, trained again "
                "(--restart)")
            last = record["history"][-1]
            final = (f"{last['test_accuracy']:.2f}% after {last['epoch']} epoch(s)"
                     + ("" if record["status"] == "finished" else f" ({record['status']})"))
            said.append(final if record is current else f"{change}: {final}")
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
        confusion = plots.confusion_figure(best["confusion_matrix"], CLASSES,
                                           f"{run.name}, {best['id']}: confusion matrix")
        per_class = best["per_class_accuracy"]
        lines += ([f"### Best config of `{run.script}` in `{run.name}`: {config_label(best)} "
                   f"(seed {best['seed']})", ""]
                  + _link(_save(confusion, figures / f"confusion_{run.name}.png"), modelset,
                          "confusion matrix")
                  + ["| " + " | ".join(per_class) + " |", "|" + "---|" * len(per_class),
                     "| " + " | ".join(f"{value:.1f}" for value in per_class.values()) + " |", ""])
        examples, copy = run.path.parent / "examples.png", figures / f"examples_{run.name}.png"
        if examples.is_file():  # not a pipe or folder of that name: copying one hangs or fails
            lines += _link(Path(shutil.copyfile(examples, copy)), modelset,
                           "test images with predictions")
    return lines + _earlier_section(run, modelset, figures)


def rerun_command(run, numbers):
    """The command that trains configs ``numbers`` into ``run``'s folder with its earlier
    flags (data as recorded, subset, epochs, seeds), so the results there stay in the views."""
    words = run.results.get("command", "").split()
    flags = " ".join(words[words.index(run.script) + 1:] if run.script in words else [])
    flags = re.sub(r"(?<!\S)--(configs|out)(=| +)\S+|(?<!\S)--restart(?!\S)", "", flags)
    world = run.results.get("world_size", 1)
    return " ".join([f"torchrun --standalone --nproc-per-node={world}" if world > 1 else "python",
                     run.script, *flags.split(), "--out", str(run.path.parent), "--configs",
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
        if not own or numbers:
            missing.append(f"- `{script}` ({task}): no results; run `python {script} --data-dir "
                           f"DIR`." if not own else f"- `{script}`: config(s) {', '.join(numbers)}"
                           f" of its CONFIGS have no results in any folder; to add them beside "
                           f"the results of `{own[-1].name}` (same data and flags, so nothing is "
                           f"moved aside): `{rerun_command(own[-1], numbers)}`.")
    lines += ["## Not run yet", ""] + ([DATA_HELP, ""] + missing if missing else [
        "Every script and every config has results.", ""]) + [""]
    text = "\n".join(lines) + "\n"
    write_atomically(modelset / "REPORT.md", lambda file: file.write(text.encode()))
    return modelset / "REPORT.md"
