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
# Task 2's regularisers: config key -> (axis name, the report's strength, log axis).
STRENGTHS = {"weight_decay": ("weight decay", 1e-4, True),
             "dropout": ("dropout probability", 0.5, False)}
SWEEP_AXES = (("lr", "learning rate", True), ("momentum", "momentum", False),
              ("batch_size", "batch size", True))  # Task 3: key, axis name, log scale


def task_number(task):
    """3 for "Task 3: LeNet hyper-parameter sweep"; None for a task not named so."""
    found = re.match(r"Task (\d+):", task) if isinstance(task, str) else None
    return int(found.group(1)) if found else None


@dataclass
class Run:
    """One usable results JSON. Its ``name`` (the folder's, plus the file's where one folder
    holds two) labels headings, legends and figure files, so no two folders overwrite."""
    path: Path
    results: dict
    name: str
    task: str  # its script's REPORT_TASK
    ignored: list = field(default_factory=list)  # naming fields of the wrong kind, dropped

    @property
    def script(self):
        return self.results["script"]


def load_runs(modelset, scripts):
    """([Run], [(path, why it was skipped)]) for every results JSON one folder below
    ``modelset``, in the order of ``scripts`` ({script: (REPORT_TASK, configs)}), then folder."""
    loaded, skipped = [], []
    for path in sorted(Path(modelset).glob("*/[!.]*.json")):  # not hidden ones
        results, problem, ignored = read_results(path)
        if problem is None and results["script"] not in scripts:
            problem = f"not a results file of the kit's scripts ('script' is {results['script']!r})"
        if problem:
            skipped.append((path, problem))
        else:
            loaded.append((path, results, ignored))
    folders = [path.parent for path, _, _ in loaded]
    runs = [Run(path, results, path.parent.name if folders.count(path.parent) == 1
                else f"{path.parent.name}_{path.stem}", scripts[results["script"]][0], ignored)
            for path, results, ignored in loaded]
    return sorted(runs, key=lambda run: (list(scripts).index(run.script), run.name)), skipped


def train_eval(entry):
    """(final eval-mode training accuracy, whether it is the running one instead: older files)."""
    last = entry["history"][-1] if entry["history"] else {}
    if last.get("train_accuracy_eval") is not None:
        return last["train_accuracy_eval"], False
    return entry["final_train_accuracy"], True


def _gap(entry):
    return train_eval(entry)[0] - entry["final_test_accuracy"]


def _finished_groups(results):
    """{config id: [finished entries, one per seed]}, configs with none left out."""
    groups = {config_id: [run for run in runs if run["status"] == "finished"]
              for config_id, runs in group_runs(results["configs"]).items()}
    return {config_id: runs for config_id, runs in groups.items() if runs}


def _mean(entries, key):
    return float(np.mean([entry[key] for entry in entries]))


def best_group(results):
    """The finished config with the highest mean final test accuracy: its entries, or []."""
    return max(_finished_groups(results).values(),
               key=lambda runs: _mean(runs, "final_test_accuracy"), default=[])


def _epochs(entries):
    return max(len(entry["history"]) for entry in entries)


def _images(run):
    data = run.results["data"]
    return f"{data['train_images']:,} training / {data['test_images']:,} test images"


def _mixes_subsets(runs):
    return len({(run.results["data"]["train_images"], run.results["data"]["test_images"])
                for run in runs}) > 1


def summary_table(results):
    """The 'Results summary' table of one script, a row per config (mean ± std over seeds),
    and the note on older files' training accuracy where one is needed."""
    rows = ["| config | settings | seeds | final test acc (%) | best test acc (%) | "
            "final train acc, eval mode (%) | final train acc, running (%) | "
            "gap train − test (pp) | training time (s) | device(s), precision | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    any_running = False
    for config_id, runs in group_runs(results["configs"]).items():
        finished = [run for run in runs if run["status"] == "finished"]

        def spread(key):
            values = [key(run) if callable(key) else run[key] for run in finished]
            return mean_std(values) if values else "—"
        running = any(train_eval(run)[1] for run in finished)
        any_running = any_running or running
        marks = ", ".join("**DIVERGED**" if status == "diverged" else status
                          for status in sorted({run["status"] for run in runs}))
        where = "; ".join([", ".join(results["devices"])]
                          + sorted({run["precision"] for run in runs if "precision" in run}))
        name = f" ({runs[0]['config']['name']})" if "name" in runs[0]["config"] else ""
        rows.append(
            f"| {config_id}{name} | {settings(runs[0]['config'])} | {len(runs)} | "
            f"{spread('final_test_accuracy')} | {spread('best_test_accuracy')} | "
            f"{'—' if running else spread(lambda run: train_eval(run)[0])} | "
            f"{spread('final_train_accuracy')} | {spread(_gap)}"
            f"{' †' if running and finished else ''} | {spread('train_seconds')} | {where} | "
            f"{marks} |")
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
    derived = []
    for entry in entries:
        elapsed = np.cumsum([record["seconds"] for record in entry["history"]])
        derived.append(dict(entry, history=[dict(
            record, elapsed=float(seconds), gap=None if record.get("test_accuracy") is None
            else plots.values_of(record, "train_accuracy_eval") - record["test_accuracy"])
            for record, seconds in zip(entry["history"], elapsed)]))
    return derived


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
    differ in one regulariser's strength alone, when it holds three strengths or more."""
    for key in STRENGTHS:
        families = {}
        for finished in _finished_groups(run.results).values():
            config = finished[0]["config"]
            rest = json.dumps({name: value for name, value in config.items()
                               if name != key and name not in NAMING_KEYS}, sort_keys=True)
            families.setdefault(rest, {}).setdefault(float(config.get(key, 0.0)), []).extend(
                finished)
        family = max(families.values(), key=len, default={})
        if len(family) >= 3:
            return key, sorted(family.items())
    return None


def _spread(values):
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def strength_figure(run, key, points, path):
    """The final gap and test accuracy against the strength, mean ± std over seeds; on a log
    axis 0 is drawn a decade left of the smallest other strength (or the report's)."""
    name, chosen, log = STRENGTHS[key]
    strengths = [strength for strength, _ in points]
    smallest = min([strength for strength in strengths if strength > 0] + [chosen])
    x = [strength if strength > 0 or not log else smallest / 10 for strength in strengths]
    figure, panels = plots.pyplot().subplots(1, 2, figsize=(13, 5.5), layout="constrained")
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
        axes.set(xlabel=f"{name} ({key})" + (" — 0 drawn at the far left" if log else ""),
                 ylabel=label)
        _finish(axes)
    seeds = sorted({len(entries) for _, entries in points})
    figure.suptitle(f"{run.task} ({run.name}): how strong must it be?\n"
                    f"{plots.subtitle(run.results, points[0][1])}; seeds per strength: "
                    f"{', '.join(map(str, seeds))}", fontsize=10)
    return _save(figure, path)


def strength_sentence(run, key, points):
    """The smallest strength whose gap is below the control's (strength 0) by more than the
    seeds' spread (the larger standard deviation), with its test accuracy, in words."""
    name = STRENGTHS[key][0]
    measured = {strength: (_spread([_gap(entry) for entry in entries]),
                           _mean(entries, "final_test_accuracy"))
                for strength, entries in points}
    if 0.0 not in measured:
        return f"{run.script} ({run.name}): the sweep has no control ({name} 0) to compare with"
    (control_gap, control_spread), control_test = measured[0.0]
    for strength, ((gap, spread), test) in measured.items():
        if strength > 0 and control_gap - gap > max(control_spread, spread):
            return (f"{run.script} ({run.name}): the smallest {name} whose gap is smaller "
                    f"than the control's by more than the seeds' spread is {strength:g} "
                    f"({gap:.2f} ± {spread:.2f} against {control_gap:.2f} ± "
                    f"{control_spread:.2f} points), with a test accuracy of {test:.2f}% "
                    f"against the control's {control_test:.2f}%")
    return (f"{run.script} ({run.name}): no {name} up to {max(measured):g} makes the gap "
            f"smaller than the control's ({control_gap:.2f} ± {control_spread:.2f} points) by "
            f"more than the seeds' spread")


def sweep_figure(sweep_runs, path):
    """Task 3: final test accuracy against lr, momentum and batch size, a row per run; in each
    panel a line joins the configs that differ only in that panel's setting."""
    plt = plots.pyplot()
    figure, grid = plt.subplots(len(sweep_runs), 3, figsize=(17, 6 * len(sweep_runs)),
                                squeeze=False, layout="constrained")
    palette = plt.get_cmap("tab10").colors
    for row, run in zip(grid, sweep_runs):
        groups = list(_finished_groups(run.results).values())
        configs = [runs[0]["config"] for runs in groups]
        for axes, (key, name, log) in zip(row, SWEEP_AXES):
            others = [other for other in plots.differing_keys(configs) if other != key]
            lines = {}
            for runs in groups:
                lines.setdefault(tuple((other, runs[0]["config"].get(other))
                                       for other in others), []).append(runs)
            for index, (line_key, members) in enumerate(lines.items()):
                members.sort(key=lambda runs: runs[0]["config"][key])
                accuracies = [[run["final_test_accuracy"] for run in runs] for runs in members]
                names = [runs[0]["config"]["name"] for runs in members
                         if "name" in runs[0]["config"]]
                axes.errorbar([runs[0]["config"][key] for runs in members],
                              [np.mean(values) for values in accuracies], capsize=3,
                              yerr=[np.std(values) for values in accuracies]
                              if max(map(len, accuracies)) > 1 else None,
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
                if len(values) > 5:  # many values on a log axis: tilted rather than overlapping
                    for label in axes.get_xticklabels():
                        label.set(rotation=45, ha="right")
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
    scripts = ", ".join(sorted({run.script for run in sweep_runs}))
    figure.suptitle(f"Task 3 ({scripts}): final test accuracy of each config; a line joins "
                    "configs that differ only in the setting on its x axis; ★ the report's "
                    "accuracy for that config", fontsize=11)
    return _save(figure, path)


def _time_curve(entries):
    """(cumulative training seconds, test accuracy, its std) per epoch: means over seeds."""
    derived = _with_derived(entries)
    _, accuracy, std = plots.mean_curve(derived, "test_accuracy")
    return plots.mean_curve(derived, "elapsed")[1], accuracy, std


def _first_reach(curve, target):
    """(epoch, cumulative seconds) where a _time_curve first reaches ``target``, or None."""
    seconds, accuracy, _ = curve
    with np.errstate(invalid="ignore"):  # an epoch without a test accuracy never reaches it
        reached = np.flatnonzero(accuracy >= target - 1e-9)  # 65.75 held as 65.7499999
    return (int(reached[0]) + 1, float(seconds[reached[0]])) if len(reached) else None


def _time_axes(axes, seconds, title, note):
    """A test accuracy against training time plot's labels; the time on a log scale when the
    ``seconds`` drawn span more than 30 times (LeNet's seconds beside hours)."""
    seconds = [value for value in seconds if value > 0]
    if seconds and max(seconds) / min(seconds) > 30:
        axes.set_xscale("log")
    axes.set(xlabel="training time (s, cumulative" + (", log scale)" if
                                                       axes.get_xscale() == "log" else ")"),
             ylabel="test accuracy (%)")
    plots.titled(axes, title, note)
    _finish(axes)


def sweep_time_figure(sweep_runs, best, path):
    """Task 3: test accuracy against cumulative training time, a line per finished config of
    each run (mean over seeds, ±1 std band); ``best`` ((accuracy, config id) or None), the
    report's best LeNet, as a level line, with a dot where each line first reaches it."""
    figure, axes = plots.pyplot().subplots(figsize=(11, 6.5))
    shown = [(run, _finished_groups(run.results)) for run in sweep_runs]
    shown = [(run, groups) for run, groups in shown if groups]
    mixed = _mixes_subsets([run for run, _ in shown])
    differing = plots.differing_keys([entries[0]["config"] for _, groups in shown
                                      for entries in groups.values()])
    seconds, offset = [], 0  # line styles continue from one run to the next
    for run, groups in shown:
        folder = f"{run.name}: " if len(shown) > 1 else ""
        images = f" [{run.results['data']['train_images']:,} images]" if mixed else ""
        plots.draw_config_curves(
            axes, _with_derived([entry for entries in groups.values() for entry in entries]),
            "test_accuracy", {config_id: folder + plots.legend_label(
                config_id, entries[0]["config"], differing) + images
                for config_id, entries in groups.items()}, x_key="elapsed", style_offset=offset)
        offset += len(groups)
        for config_id, entries in groups.items():
            curve = _time_curve(entries)
            seconds += list(curve[0])
            reach = _first_reach(curve, best[0]) if best else None
            if reach:
                axes.plot(reach[1], curve[1][reach[0] - 1], marker="o", markersize=9,
                          color=plots.color(config_id), markeredgecolor="black",
                          linestyle="none", zorder=5)
    if best:
        axes.axhline(best[0], color="black", linestyle=":", linewidth=1.3,
                     label=f"the report's best LeNet: {best[0]:g}% ({best[1]}, 50,000 "
                           "training images); a dot: where a line first reaches it")
        # at the left, where the curves are still low, so no curve hides it
        axes.text(0.005, best[0], f" the report's best LeNet: {best[0]:g}%", ha="left",
                  va="bottom", fontsize=9, transform=axes.get_yaxis_transform())
    run, groups = shown[0]
    if mixed:
        axes.text(0.01, 0.99, MIXED_NOTE, transform=axes.transAxes, va="top", fontsize=8,
                  color="darkred")
    _time_axes(axes, seconds, "Task 3: test accuracy against training time, every finished config",
               plots.subtitle(run.results, [entry for entries in groups.values()
                                            for entry in entries]) if len(shown) == 1 else
               f"folders {', '.join(run.name for run, _ in shown)}; each timed on its own "
               "device(s)")
    return _save(figure, path)


def accuracy_time_figure(runs, path):
    """Task 4: test accuracy against training time, the best config of each run, coloured by
    script (LeNet dashed, ResNet-18 solid), with the report's ResNet-18 points."""
    plt = plots.pyplot()
    figure, axes = plt.subplots(figsize=(10, 6))
    shown = [(run, best_group(run.results)) for run in runs]
    shown = [(run, best) for run, best in shown if best]
    mixed = _mixes_subsets([run for run, _ in shown])
    differing = plots.differing_keys([best[0]["config"] for _, best in shown])
    scripts = list(dict.fromkeys(run.script for run in runs))  # a colour per script
    for index, (run, best) in enumerate(shown):
        resnet = task_number(run.task) == 4
        elapsed, accuracy, std = _time_curve(best)
        config, colour = best[0]["config"], plt.get_cmap("tab10").colors[
            scripts.index(run.script) % 10]
        images = f" [{run.results['data']['train_images']:,} images]" if mixed else ""
        axes.plot(elapsed, accuracy, color=colour, **dict(
            plots.line_style(index, len(elapsed)), linestyle="-" if resnet else "--"),
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
    axes.text(0.01, 0.99, "the best config of each folder; colour: script; solid: ResNet-18, "
              "dashed: LeNet" + (f"\n{MIXED_NOTE}" if mixed else ""), transform=axes.transAxes,
              va="top", fontsize=8, color="darkred" if mixed else "black")
    _time_axes(axes, [value for line in axes.lines for value in np.atleast_1d(line.get_xdata())],
               "Task 4: test accuracy against training time", None)
    return _save(figure, path)


def earlier_runs(run):
    """{config id: (its shown run's record, [earlier records])}: runs in the folder's store of
    the same script, base seed and config name (unnamed: id) that are not shown now."""
    folder, base = run.path.parent, run.results["seed"]
    records, found = store.runs(folder), {}
    for entry in run.results["configs"]:
        shown = folder / entry["run"] if isinstance(entry.get("run"), str) else None
        if entry["seed"] != base or shown not in records:
            continue
        name = entry["config"].get("name")
        earlier = [record for run_dir, record in records.items()
                   if run_dir != shown and record["seed"] == base and record["history"]
                   and record["identity"].get("script") == run.script
                   and (record["config"].get("name") == name if name is not None
                        else "name" not in record["config"] and record.get("label") == entry["id"])]
        if earlier:
            found[entry["id"]] = (records[shown], earlier)
    return found


def change_label(earlier, current):
    """What differs from an earlier run of a config to its run now: "lr 0.001 -> 0.005"."""
    was, now = (store.config_identity(record["identity"].get("config") or {}, {})
                for record in (earlier, current))
    change = store.describe_change(was, now)
    if not change and earlier["identity"].get("model") != current["identity"].get("model"):
        change = "the model changed"
    return change or "the same config, trained again (--restart)"


def _earlier_section(run, modelset, figures):
    """For each config with earlier runs, their test accuracy curves beside its run now."""
    lines = []
    for config_id, (current, earlier) in earlier_runs(run).items():
        figure, axes = plots.pyplot().subplots(figsize=(9, 5.5))
        for record in [*earlier, current]:
            epochs = [point["epoch"] for point in record["history"]]
            style = dict(color="black", linewidth=2, label=f"now: {config_id}") \
                if record is current else dict(alpha=0.8, linestyle="--",
                                               label=f"earlier ({change_label(record, current)})")
            axes.plot(epochs, [point["test_accuracy"] for point in record["history"]],
                      marker="o" if len(epochs) == 1 else None, **style)
        axes.set(title=f"{Path(run.script).stem}: {config_id}, earlier runs and now",
                 xlabel="epoch", ylabel="test accuracy (%)")
        plots.whole_epochs(axes, max(len(record["history"]) for record in [*earlier, current]))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        path = _save(figure, figures / f"{run.name}_{config_id}_earlier.png")
        changes = "; ".join(f"{change_label(record, current)}: {_final(record)}"
                            for record in earlier)
        lines += [f"**{config_id}, earlier runs** (kept in `{run.path.parent.name}/runs/`): "
                  f"{changes}; now {_final(current)}.", ""]
        lines += _link(path, modelset, f"{config_id}: earlier runs and now")
    return lines


def _final(record):
    last = record["history"][-1]
    return (f"{last['test_accuracy']:.2f}% after {last['epoch']} epoch(s)"
            + ("" if record["status"] == "finished" else f" ({record['status']})"))


def _link(path, modelset, caption):
    return [f"![{caption}]({quote(path.relative_to(modelset).as_posix())})", ""]


def _claim(said):
    return [f"**Our runs against the report:** {said}", ""]


def _mixed_warning(runs):
    """A warning line when the runs of one table or figure used different image counts."""
    if not _mixes_subsets(runs):
        return []
    counts = "; ".join(f"`{run.name}`: {_images(run)}" for run in runs)
    return [f"> **Warning: this compares runs on different numbers of images** ({counts}). "
            "Accuracies and gaps depend on the amount of data: compare runs of one size.", ""]


def _task1_section(task_runs, runs, modelset, figures):
    said = [f"in `{run.name}` the baseline reached {_mean(best, 'final_test_accuracy'):.1f}% "
            f"test accuracy after {_epochs(best)} epoch(s) on {_images(run)}"
            + (f"; the report: {best[0]['config']['reported_accuracy']:g}% (all 50,000 "
               f"training images)" if "reported_accuracy" in best[0]["config"] else "")
            for run in task_runs for best in [best_group(run.results)] if best]
    return _claim("; ".join(said) + ".") if said else []


def _task2_section(task_runs, runs, modelset, figures):
    if not task_runs:
        return []
    lines = ["## Task 2: regularisation and the generalisation gap", ""]
    lines += _link(gap_figure(task_runs, figures / "task2_gap.png"), modelset,
                   "train-test gap per epoch") + _mixed_warning(task_runs)
    lines += ["| script | folder | config | final gap, eval mode (pp) | final gap, running "
              "(pp) | final test acc (%) | images (train / test) |", "|---|---|---|---|---|---|---|"]
    said, running = [], False
    for run in task_runs:
        data, groups = run.results["data"], _finished_groups(run.results)
        for finished in groups.values():
            old = any(train_eval(entry)[1] for entry in finished)
            running = running or old
            lines.append(
                f"| {run.script} | {run.name} | {config_label(finished[0])} | "
                f"{'— †' if old else mean_std([_gap(entry) for entry in finished])} | "
                f"{mean_std([e['final_train_accuracy'] - e['final_test_accuracy'] for e in finished])}"
                f" | {mean_std([entry['final_test_accuracy'] for entry in finished])} | "
                f"{data['train_images']:,} / {data['test_images']:,} |")
        control_id = next((config_id for config_id, entries in groups.items()
                           if entries[0]["config"].get("name") == "control"), next(iter(groups), None))
        if control_id is not None and len(groups) > 1:
            said.append(_gap_sentence(run, groups, control_id))
    lines += ["", RUNNING_NOTE] if running else []
    lines += [""] + (_claim("; ".join(said) + f"; the report: {TASK2_CLAIM}.") if said else [])
    for run in task_runs:
        sweep = strength_sweep(run)
        if sweep:
            path = strength_figure(run, *sweep, figures / f"task2_strength_{run.name}.png")
            lines += _link(path, modelset,
                           f"{STRENGTHS[sweep[0]][0]} against the gap and test accuracy")
            lines += _claim(strength_sentence(run, *sweep) + ".")
    return lines


def _gap_sentence(run, groups, control_id):
    """What each regularised config did to the gap against the run's control, in words."""
    control = groups[control_id]
    gap, accuracy, parts = np.mean([_gap(entry) for entry in control]), _mean(
        control, "final_test_accuracy"), []
    for config_id, entries in groups.items():
        if config_id == control_id:
            continue
        changed = plots.differing_keys([control[0]["config"], entries[0]["config"]])
        what = ", ".join(f"{key} {entries[0]['config'].get(key)}" for key in changed) or config_id
        new_gap = float(np.mean([_gap(entry) for entry in entries]))
        change = _mean(entries, "final_test_accuracy") - accuracy
        moved = (f"left the gap at {gap:.1f} points" if round(new_gap, 1) == round(gap, 1) else
                 f"{'narrowed' if new_gap < gap else 'widened'} the gap from {gap:.1f} to "
                 f"{new_gap:.1f} points")
        parts.append(f"{what} {moved} " + (f"at a cost of {-change:.1f} points of test accuracy"
                                           if change < 0 else
                                           f"and gained {change:.1f} points of test accuracy"))
    return f"in `{run.name}` ({_images(run)}, {_epochs(control)} epochs), " + "; ".join(parts)


def _task3_section(task_runs, runs, modelset, figures):
    if not task_runs:
        return []
    lines = (["## Task 3: learning rate, momentum and batch size", ""]
             + _link(sweep_figure(task_runs, figures / "task3_sweep.png"), modelset, "sweep"))
    # The course report's best LeNet: the highest reported_accuracy among the configs run.
    best = max(((entry["config"]["reported_accuracy"], entry["id"]) for run in task_runs
                for entry in run.results["configs"] if "reported_accuracy" in entry["config"]),
               default=None)
    if any(_finished_groups(run.results) for run in task_runs):
        lines += _link(sweep_time_figure(task_runs, best, figures / "task3_accuracy_vs_time.png"),
                       modelset, "test accuracy against training time")
    lines += _mixed_warning(task_runs)
    said, timed = [], []
    for run in task_runs:
        groups = _finished_groups(run.results)
        if not groups:
            continue
        ours = max(groups, key=lambda config_id: _mean(groups[config_id], "final_test_accuracy"))
        reported = {config_id: entries[0]["config"]["reported_accuracy"]
                    for config_id, entries in groups.items()
                    if "reported_accuracy" in entries[0]["config"]}
        text = (f"in `{run.name}` ({_images(run)}, {_epochs(groups[ours])} epochs) the best of "
                f"{len(groups)} finished configs is {_describe(groups[ours])} at "
                f"{_mean(groups[ours], 'final_test_accuracy'):.1f}%")
        if reported:
            theirs = max(reported, key=reported.get)
            text += (f"; the report's best of the same configs: {_describe(groups[theirs])} at "
                     f"{reported[theirs]:g}%" + (" (the same config)" if theirs == ours else ""))
        said.append(text)
        if best:
            timed.append(_time_sentence(run, groups, best))
    return (lines + (_claim("; ".join(said) + ".") if said else [])
            + ([f"**Time to the report's best LeNet, {best[0]:g}% (its {best[1]}, all 50,000 "
                f"training images):** " + " ".join(timed), ""] if timed else []))


def _describe(entries):
    config = entries[0]["config"]
    return (f"{entries[0]['id']} (lr {config['lr']:g}, momentum {config['momentum']:g}, "
            f"batch {config['batch_size']})")


def _time_sentence(run, groups, best):
    """How soon the finished configs first reach ``best`` ((accuracy, config id)), in words:
    the fastest two (the closest when none does), the report's best config, how many do."""
    curves = {config_id: _time_curve(entries) for config_id, entries in groups.items()}
    reaches = {config_id: _first_reach(curve, best[0]) for config_id, curve in curves.items()}
    fastest = sorted((config_id for config_id in groups if reaches[config_id]),
                     key=lambda config_id: reaches[config_id][1])
    told = fastest[:2] or [max(curves, key=lambda config_id: np.nanmax(curves[config_id][1]))]
    told += [best[1]] if best[1] in groups and best[1] not in told else []
    parts = []
    for config_id in told:
        config, entries, reach = groups[config_id][0]["config"], groups[config_id], reaches[config_id]
        named = (config_id + (f" ({config['name']})" if "name" in config else "")
                 + (" (the report's best config)" if config_id == best[1] else ""))
        parts.append(f"{named} first reaches it after {duration(reach[1])} of training (epoch "
                     f"{reach[0]} of {_epochs(entries)})" if reach else
                     f"{named} does not reach it (its best: "
                     f"{np.nanmax(curves[config_id][1]):.1f}% in {_epochs(entries)} epochs)")
    parts.append(f"{len(fastest)} of {len(groups)} finished configs "
                 + ("reaches it" if len(fastest) == 1 else "reach it"))
    seeds = max(len(entries) for entries in groups.values())
    return (f"In `{run.name}` ({_images(run)}, {', '.join(run.results['devices'])}"
            + (f"; means over up to {seeds} seeds" if seeds > 1 else "") + "), "
            + "; ".join(parts) + ".")


def _task4_section(task_runs, runs, modelset, figures):
    if not task_runs:
        return []
    path = accuracy_time_figure(runs, figures / "task4_accuracy_vs_time.png")
    lines = (["## Task 4: LeNet against ResNet-18, accuracy for time", ""]
             + _link(path, modelset, "accuracy against time")
             + _mixed_warning([run for run in runs if best_group(run.results)]))
    bests = [(run, best_group(run.results)) for run in runs]
    resnet = [(run, best) for run, best in bests if best and run in task_runs]
    lenet = [(run, best) for run, best in bests if best and run not in task_runs]
    if not resnet:
        return lines
    said = [f"{model}'s best here is {best[0]['id']} of `{run.name}` at "
            f"{_mean(best, 'final_test_accuracy'):.1f}% in {_mean(best, 'train_seconds'):.0f} s "
            f"({_images(run)}, {_epochs(best)} epoch(s), {', '.join(run.results['devices'])})"
            for model, pairs in (("ResNet-18", resnet), ("LeNet", lenet)) if pairs
            for run, best in [max(pairs, key=lambda pair: _mean(pair[1], "final_test_accuracy"))]]
    reported = [best[0]["config"] for _, best in resnet  # a point needs both figures
                if {"reported_seconds", "reported_accuracy"} <= best[0]["config"].keys()]
    lenet_reported = [entry["config"]["reported_accuracy"] for run in runs
                      if run not in task_runs for entry in run.results["configs"]
                      if "reported_accuracy" in entry["config"]]
    claim = "; ".join(said)
    if reported:
        config = max(reported, key=lambda config: config["reported_accuracy"])
        claim += (f"; the report: ResNet-18 ({config['lr']:g} lr, {config['momentum']:g} "
                  f"momentum) {config['reported_accuracy']:g}% in "
                  f"{config['reported_seconds']:g} s on one A100"
                  + (f", against {max(lenet_reported):g}% for the report's best LeNet "
                     f"among the configs we ran" if lenet_reported else ""))
    return lines + _claim(claim + ".")


def _run_section(run, modelset, figures):
    """A run's heading, its summary table, its best config's confusion matrix and per-class
    accuracy and example predictions, and its configs' earlier runs."""
    data = run.results["data"]
    lines = [f"## {run.task} (`{run.script}`), `{run.name}`", "",
             f"From `{run.path.relative_to(modelset)}`: {data['train_images']:,} training and "
             f"{data['test_images']:,} test images ({data['source']}); devices: "
             f"{', '.join(run.results['devices'])}; world size "
             f"{run.results.get('world_size', 1)}; seed {run.results['seed']}.", "",
             summary_table(run.results), ""]
    best = max((entry for entry in run.results["configs"]
                if entry["status"] == "finished" and "confusion_matrix" in entry),
               key=lambda entry: entry["final_test_accuracy"], default=None)
    if best is not None:
        lines += [f"### Best config of `{run.script}` in `{run.name}`: {config_label(best)} "
                  f"(seed {best['seed']})", ""]
        confusion = plots.confusion_figure(best["confusion_matrix"], CLASSES,
                                           f"{run.name}, {best['id']}: confusion matrix")
        lines += _link(_save(confusion, figures / f"confusion_{run.name}.png"), modelset,
                       "confusion matrix")
        per_class = best["per_class_accuracy"]
        lines += ["| " + " | ".join(per_class) + " |", "|" + "---|" * len(per_class),
                  "| " + " | ".join(f"{value:.1f}" for value in per_class.values()) + " |", ""]
        examples = run.path.parent / "examples.png"
        if examples.is_file():  # not a pipe or folder of that name: copying one hangs or fails
            copy = figures / f"examples_{run.name}.png"
            shutil.copyfile(examples, copy)
            lines += _link(copy, modelset, "test images with predictions")
    return lines + _earlier_section(run, modelset, figures)


def rerun_command(run, numbers):
    """The command that trains configs ``numbers`` into ``run``'s folder with its earlier
    flags (data, subset, epochs, seeds: --data-dir as recorded, absent included), so the
    results already there stay in the views."""
    words = run.results.get("command", "").split()
    flags = words[words.index(run.script) + 1:] if run.script in words else []
    kept, skip = [], False
    for word in flags:
        if skip:
            skip = False
        elif word in ("--configs", "--out"):
            skip = True  # it and its value are replaced below
        elif word != "--restart" and not word.startswith(("--configs=", "--out=")):
            kept.append(word)
    world = run.results.get("world_size", 1)
    launcher = f"torchrun --standalone --nproc-per-node={world}" if world > 1 else "python"
    return " ".join([launcher, run.script] + kept
                    + ["--out", str(run.path.parent), "--configs", ",".join(numbers)])


def _missing_section(runs, scripts):
    lines = []
    for script, (task, defined) in scripts.items():
        own = [run for run in runs if run.script == script]
        done = {entry["id"] for run in own for entry in run.results["configs"]}
        missing = [str(number) for number in range(1, defined + 1)
                   if f"config_{number}" not in done]  # in none of its folders
        if not own:
            lines.append(f"- `{script}` ({task}): no results; run "
                         f"`python {script} --data-dir DIR`.")
        elif missing:
            lines.append(f"- `{script}`: config(s) {', '.join(missing)} of its CONFIGS have no "
                         f"results in any folder; to add them beside the results of "
                         f"`{own[-1].name}` (same data and flags, so nothing is moved aside): "
                         f"`{rerun_command(own[-1], missing)}`.")
    return ["## Not run yet", ""] + ([DATA_HELP, ""] + lines if lines else [
        "Every script and every config has results.", ""]) + [""]


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
    lines += _missing_section(runs, scripts)
    report = modelset / "REPORT.md"
    text = "\n".join(lines) + "\n"
    write_atomically(report, lambda file: file.write(text.encode()))
    return report
