"""modelset/ -> modelset/REPORT.md and modelset/figures/: the report's tables, figures and
sentences, rebuilt from the results JSON the scripts wrote (read and checked by results.py)."""
import os
import re
import secrets
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import plots, signals, store
from .results import (CLASSES, config_label, duration, group_runs, mean_std,
                      read_results, settings, write_atomically)

KIT = Path(__file__).resolve().parent.parent  # the scripts' folder

REPORT_HEADER = "# CIFAR-10 report, regenerated from"  # how make_report knows its own file
STAGING = re.compile(r"\.(figures-old-)?\.?report-[0-9a-f]{8}")  # write_report's own folders
IGNORED = "ignored (it only names the config or quotes the report)"
# The report gives no numbers for Task 2; the other tasks quote the configs' reported_* keys.
TASK2_CLAIM = ("L2 weight decay (1e-4) and dropout (0.5) reduce overfitting, i.e. shrink the "
               "gap between training and test accuracy")
DATA_HELP = ("`DIR` is the folder holding your copy of CIFAR-10 (see docs/data.md, "
             "\"Data: downloaded, local, or offline\"); leave `--data-dir DIR` out to download "
             "it into `./data`.")
TIME_HELP = ("Times in brackets: training alone, at the speeds measured on a 2-core CPU "
             "(benchmarks/RESULTS.md); each run prints its own estimate once it starts.")


def task_number(task):
    """3 for "Task 3: LeNet hyper-parameter sweep"; None for a task not named so."""
    found = re.match(r"Task (\d+):", task) if isinstance(task, str) else None
    return int(found.group(1)) if found else None


@dataclass
class Run:
    """A usable results JSON; ``name`` (folder, plus file where it holds two) keeps files apart."""
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
    ``modelset``, in the order of ``scripts`` ({script: make_report.ScriptText}), then folder."""
    found, skipped = [], []
    for path in sorted(Path(modelset).glob("*/[!.]*.json")):  # not hidden ones
        results, problem, ignored = read_results(path)
        problem = store.pre_store(path.parent, path.name) or problem
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
        scripts[results["script"]].task, ignored) for path, results, ignored in found]
    return sorted(runs, key=lambda run: (list(scripts).index(run.script), run.name)), skipped


def _gap(entry):
    return entry["history"][-1]["train_accuracy_eval"] - entry["final_test_accuracy"]


def _mean(entries, key):
    return float(np.mean([entry[key] if isinstance(key, str) else key(entry) for entry in entries]))


def summary_table(results):
    """One script's 'Results summary' table, a row per config."""
    rows = ["| config | settings | seeds | final test acc (%) | best test acc (%) | final train "
            "acc, eval mode (%) | final train acc, running (%) | gap train − test (pp) | "
            "training time (s) | device(s), precision | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for config_id, runs in group_runs(results["configs"]).items():
        finished = [run for run in runs if run["status"] == "finished"]
        measures = (lambda run: run["final_test_accuracy"], lambda run: run["best_test_accuracy"],
                    lambda run: run["history"][-1]["train_accuracy_eval"],
                    lambda run: run["final_train_accuracy"], _gap, lambda run: run["train_seconds"])
        cells = [mean_std(list(map(measure, finished))) if finished else "—"
                 for measure in measures]
        where = "; ".join([", ".join(results["devices"])]
                          + sorted({run["precision"] for run in runs if "precision" in run}))
        marks = ", ".join("**DIVERGED**" if status == "diverged" else status
                          for status in sorted({run["status"] for run in runs}))
        name = f" ({runs[0]['config']['name']})" if "name" in runs[0]["config"] else ""
        rows.append(" | ".join([f"| {config_id}{name}", settings(runs[0]["config"]),
                                str(len(runs))] + cells + [where, f"{marks} |"]))
    return "\n".join(rows)


def _strength_lines(run, figures):
    """The strength figure of a run, and the smallest strength whose gap is below the control's
    (0) by more than the seeds' spread (the larger std), in words."""
    key, points = plots.strength_sweep(run)
    name = plots.STRENGTHS[key][0]
    strengths = [strength for strength, _ in points]
    spreads = [[(np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0.0)
                for values in ([measure(entry) for entry in entries] for _, entries in points)]
               for measure in (_gap, lambda entry: entry["final_test_accuracy"])]
    lines = _link(figures / f"task2_strength_{run.name}.png",
                  f"{name} against the gap and test accuracy",
                  plots.strength_figure(run, key, points, spreads, plots.STRENGTHS[key]))
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


def _link(path, caption, figure=None):
    if figure is not None:
        plots.save(figure, path)
    return [f"![{caption}](figures/{quote(path.name)})", ""]


def _claim(said):
    return [f"**Our runs against the report:** {said}", ""]


def _mixed_warning(runs):
    """A warning line when the runs of one table or figure used different image counts, or []."""
    mixed = len({run.images for run in runs}) > 1
    return ["> **Warning: this compares runs on different numbers of images** ("
            + "; ".join(f"`{run.name}`: {run.images}" for run in runs) + "). Accuracies and gaps "
            "depend on the amount of data: compare runs of one size.", ""] if mixed else []


def reported_lenet(runs, scripts):
    """(accuracy, config id, script, epochs or None): the highest reported_accuracy of Tasks 1-3,
    CONFIGS first (they hold the report's epochs), then results; None where none quotes one."""
    found = [(config["reported_accuracy"], f"config_{number}", script, config.get("num_epochs"))
             for script, text in scripts.items() if task_number(text.task) != 4
             for number, config in enumerate(text.configs, 1)
             if isinstance(config.get("reported_accuracy"), (int, float))]
    found += [(entry["config"]["reported_accuracy"], entry["id"], run.script, None)
              for run in runs if task_number(run.task) != 4
              for entry in run.results["configs"] if "reported_accuracy" in entry["config"]]
    return max(found, key=lambda best: best[0], default=None)


def _named(best):
    return (f"{best[0]:g}% ({best[1]} of {best[2]}"
            + (f", {best[3]} epochs" if best[3] else "") + ")")


def _task1_section(task_runs, runs, figures, scripts):
    """The baseline (the config that quotes the report), else the best config, against it."""
    said = []
    for run in (run for run in task_runs if run.best):
        entries = next((entries for entries in run.groups.values()
                        if "reported_accuracy" in entries[0]["config"]), None)
        what = "the baseline" if entries else f"the best config, {run.best[0]['id']},"
        entries = entries or run.best
        said.append(f"in `{run.name}` {what} reached {_mean(entries, 'final_test_accuracy'):.1f}% "
                    f"test accuracy after {plots.last_epoch(entries)} epoch(s) on {run.images}"
                    + (f"; the report: {entries[0]['config']['reported_accuracy']:g}% (all "
                       f"50,000 training images)" if "reported_accuracy" in entries[0]["config"]
                       else ""))
    return _claim("; ".join(said) + ".") if said else []


def _task2_section(task_runs, runs, figures, scripts):
    """Task 2's gap figure, table and per-run sentences, and any run's strength sweep."""
    lines = (["## Task 2: regularisation and the generalisation gap", ""]
             + _link(figures / "task2_gap.png", "train-test gap per epoch",
                     plots.gap_figure(task_runs)) + _mixed_warning(task_runs)
             + ["| script | folder | config | final gap, eval mode (pp) | final gap, running (pp)"
                " | final test acc (%) | images (train / test) |",
                "|---|---|---|---|---|---|---|"])
    for run in task_runs:
        for entries in run.groups.values():
            lines.append(" | ".join([f"| {run.script}", run.name, config_label(entries[0]),
                mean_std([_gap(entry) for entry in entries]),
                mean_std([e["final_train_accuracy"] - e["final_test_accuracy"] for e in entries]),
                mean_std([entry["final_test_accuracy"] for entry in entries]),
                f"{run.results['data']['train_images']:,} / "
                f"{run.results['data']['test_images']:,} |"]))
    said = [sentence for sentence in map(_gap_sentence, task_runs) if sentence]
    lines.append("")
    lines += _claim("; ".join(said) + f"; the report: {TASK2_CLAIM}.") if said else []
    return lines + [line for run in task_runs if plots.strength_sweep(run)
                    for line in _strength_lines(run, figures)]


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
    return (f"in `{run.name}` ({run.images}, {plots.last_epoch(control)} epochs), "
            + "; ".join(parts) if parts else None)


def _task3_section(task_runs, runs, figures, scripts):
    """Task 3's sweep and time figures, and per run our best config beside the report's LeNet."""
    sweep = plots.sweep_figure(task_runs)
    lines = ["## Task 3: learning rate, momentum and batch size", ""] + (_link(
        figures / "task3_sweep.png", "sweep", sweep) if sweep else [
        "No sweep figure yet: it needs two or more finished configs of one folder that differ "
        "in learning rate, momentum or batch size.", ""])
    best = reported_lenet(runs, scripts)
    shown = [run for run in task_runs if run.groups]
    if shown:
        lines += _link(figures / "task3_accuracy_vs_time.png",
                       "test accuracy against training time", plots.task3_time_figure(shown, best))
    said = []
    for run in shown:
        config, accuracy = run.best[0]["config"], _mean(run.best, "final_test_accuracy")
        said.append(f"in `{run.name}` ({run.images}, {plots.last_epoch(run.best)} epochs) the "
                    f"best of {len(run.groups)} finished configs is {run.best[0]['id']} (lr "
                    f"{config['lr']:g}, momentum {config['momentum']:g}, batch "
                    f"{config['batch_size']}) at {accuracy:.1f}%" + (
                        f" (the report: {config['reported_accuracy']:g}%)"
                        if "reported_accuracy" in config else "") + (
                        f", {abs(accuracy - best[0]):.1f} points "
                        + ("below" if accuracy < best[0] else "above")
                        + f" the report's best LeNet, {_named(best)}" if best else ""))
    timed = [_time_sentence(run, best) for run in shown] if best else []
    return (lines + _mixed_warning(task_runs) + (_claim("; ".join(said) + ".") if said else [])
            + ([f"**Time to the report's best LeNet, {best[0]:g}% (its {best[1]}, all 50,000 "
                f"training images):** " + " ".join(timed), ""] if timed else []))


def _time_sentence(run, best):
    """How soon the run's finished configs first reach ``best`` ((accuracy, config id)): the
    fastest two (the closest when none does), the report's best config, and how many do."""
    curves = {config_id: plots.time_curve(entries) for config_id, entries in run.groups.items()}
    mine = best[1] if best[2] == run.script else None  # the report's best is a config here
    reaches = {config_id: plots.first_reach(curve, best[0]) for config_id, curve in curves.items()}
    fastest = sorted(filter(reaches.get, curves), key=lambda config_id: reaches[config_id][1])
    told = fastest[:2] or [max(curves, key=lambda config_id: np.nanmax(curves[config_id][1]))]
    parts, seeds = [], max(len(entries) for entries in run.groups.values())
    for config_id in told + ([mine] if mine in curves and mine not in told else []):
        config, epochs = run.groups[config_id][0]["config"], plots.last_epoch(run.groups[config_id])
        named = (config_id + (f" ({config['name']})" if "name" in config else "")
                 + (" (the report's best config)" if config_id == mine else ""))
        reach = reaches[config_id]
        parts.append(f"{named} first reaches it after {duration(reach[1])} of training (epoch "
                     f"{reach[0]} of {epochs})" if reach else f"{named} does not reach it (its "
                     f"best: {np.nanmax(curves[config_id][1]):.1f}% in {epochs} epochs)")
    parts.append(f"{len(fastest)} of {len(curves)} finished configs reach"
                 + ("es it" if len(fastest) == 1 else " it"))
    return (f"In `{run.name}` ({run.images}, {', '.join(run.results['devices'])}"
            + (f"; means over up to {seeds} seeds" if seeds > 1 else "") + "), "
            + "; ".join(parts) + ".")


def _task4_section(task_runs, runs, figures, scripts):
    """Task 4's accuracy-for-time figure of every run's best, and each model's best in words."""
    shown = [run for run in runs if run.best]
    lines = (["## Task 4: LeNet against ResNet-18, accuracy for time", ""]
             + _link(figures / "task4_accuracy_vs_time.png", "accuracy against time",
                     plots.task4_time_figure(shown, task_runs)) + _mixed_warning(shown))
    said = [f"{model}'s best here is {run.best[0]['id']} of `{run.name}` at "
            f"{_mean(run.best, 'final_test_accuracy'):.1f}% in "
            f"{_mean(run.best, 'train_seconds'):.0f} s ({run.images}, {plots.last_epoch(run.best)} "
            f"epoch(s), {', '.join(run.results['devices'])})"
            for model, pool in (("ResNet-18", [run for run in shown if run in task_runs]),
                                ("LeNet", [run for run in shown if run not in task_runs]))
            for run in sorted(pool, key=lambda run: -_mean(run.best, "final_test_accuracy"))[:1]]
    reported = [run.best[0]["config"] for run in task_runs if run.best
                and {"reported_seconds", "reported_accuracy"} <= run.best[0]["config"].keys()]
    lenet = reported_lenet(runs, scripts)
    if reported:
        config = max(reported, key=lambda config: config["reported_accuracy"])
        said.append(f"the report: ResNet-18 ({config['lr']:g} lr, {config['momentum']:g} "
                    f"momentum) {config['reported_accuracy']:g}% in {config['reported_seconds']:g}"
                    f" s on one A100" + (f", against {_named(lenet)} for its best LeNet"
                                         if lenet else ""))
    return lines + (_claim("; ".join(said) + ".") if any(run in task_runs for run in shown) else [])


def _earlier_section(run, figures):
    """Each config's earlier runs kept in its folder, their test accuracy beside its run now."""
    folder, base, lines = run.path.parent, run.results["seed"], []
    records = store.runs(folder)
    for entry in run.results["configs"]:
        shown = folder / entry["run"] if isinstance(entry.get("run"), str) else None
        name, current = entry["config"].get("name"), records.get(shown)
        earlier = [(run_dir, record) for run_dir, record in records.items()
                   if run_dir != shown and record["seed"] == base and record["history"]
                   and record["identity"].get("script") == run.script
                   and (record["config"].get("name") == name if name is not None else
                        "name" not in record["config"] and record.get("label") == entry["id"])]
        if entry["seed"] != base or current is None or not earlier or not current["history"]:
            continue
        said, histories, neutral = [], [], current["identity"].get("neutral") or {}
        for run_dir, record in [*earlier, (shown, current)]:
            was, now = (store.config_identity(store.trained_config(one["identity"]), neutral)
                        for one in (record, current))
            change = store.describe_change(was, now, neutral) or (
                "the model changed" if record["identity"].get("model")
                != current["identity"].get("model") else "the same config, trained again "
                + ("(its weights were deleted or changed)" if record["status"] == "finished"
                   and not store.usable(run_dir, record) else "(--restart)"))
            last = record["history"][-1]
            final = (f"{last['test_accuracy']:.2f}% after {last['epoch']} epoch(s)"
                     + ("" if record["status"] == "finished" else f" ({record['status']})"))
            said.append(final if record is current else f"{change}: {final}")
            histories.append((record["history"], f"now: {entry['id']}" if record is current
                              else f"earlier ({change})"))
        figure = plots.earlier_figure(
            f"{Path(run.script).stem}: {entry['id']}, earlier runs and now", histories)
        lines += [f"**{entry['id']}, earlier runs** (kept in `{folder.name}/runs/`): "
                  f"{'; '.join(said[:-1])}; now {said[-1]}.", ""]
        lines += _link(figures / f"{run.name}_{entry['id']}_earlier.png",
                       f"{entry['id']}: earlier runs and now", figure)
    return lines


def _run_section(run, modelset, figures):
    """A run's heading, summary table, best config's confusion matrix and examples, earlier runs."""
    data = run.results["data"]
    lines = [f"## {run.task} (`{run.script}`), `{run.name}`", "",
             f"From `{run.path.relative_to(modelset)}`: {data['train_images']:,} training and "
             f"{data['test_images']:,} test images ({data['source']}); devices: "
             f"{', '.join(run.results['devices'])}; world size {run.results.get('world_size', 1)}"
             f"; seed {run.results['seed']}.", "", summary_table(run.results), ""]
    best = max((entry for entries in run.groups.values() for entry in entries),  # all finished
               key=lambda entry: entry["final_test_accuracy"], default=None)
    if best is not None:
        confusion = plots.confusion_figure(best["confusion_matrix"], CLASSES,
                                           f"{run.name}, {best['id']}: confusion matrix")
        per_class = best["per_class_accuracy"]
        lines += ([f"### Best config of `{run.script}` in `{run.name}`: {config_label(best)} "
                   f"(seed {best['seed']})", ""]
                  + _link(figures / f"confusion_{run.name}.png", "confusion matrix", confusion)
                  + [f"Test accuracy per class (%) of {best['id']}: the share of each class's "
                     "test images it named right (the confusion matrix's diagonal).", "",
                     "| " + " | ".join(per_class) + " |", "|" + "---|" * len(per_class),
                     "| " + " | ".join(f"{value:.1f}" for value in per_class.values()) + " |", ""])
        examples, copy = run.path.parent / "examples.png", figures / f"examples_{run.name}.png"
        if examples.is_file():  # not a pipe or folder of that name: copying one hangs or fails
            lines += _link(Path(shutil.copyfile(examples, copy)), "test images with predictions")
    return lines + _earlier_section(run, figures)


def command_path(path):
    """``path`` for REPORT.md: relative where make_report runs in the kit, else absolute."""
    path = Path(path).resolve()
    here = Path.cwd().resolve() == KIT and path.is_relative_to(KIT)
    return shlex.quote(str(path.relative_to(KIT) if here else path))


def cpu_time(configs, images, command, resnet):
    """' (roughly 1.2 h on a 2-core CPU)' for CONFIGS entries on ``images`` images by ``command``
    (its --epochs, --seeds); images/s as benchmarks/RESULTS.md measured (ResNet-18 with AVX512)."""
    epochs, seeds = (re.search(rf"--{flag}[= ](\d+)", command) for flag in ("epochs", "seeds"))
    try:
        seconds = sum((int(epochs[1]) if epochs else config["num_epochs"]) * images / (
            100 if resnet else 2000 if config["batch_size"] < 16 else 8000
            if config["batch_size"] < 128 else 12000) for config in configs)
    except (KeyError, TypeError):  # a config not written as a literal
        return ""
    return (f" (roughly {duration(seconds * (int(seeds[1]) if seeds else 1))} on a 2-core CPU"
            + (" with AVX512, twice that without)" if resnet else ")"))


def _not_run_section(runs, scripts, modelset):
    """Each script or config without results, the command that trains it here, and rough time."""
    missing = []
    for script, text in scripts.items():
        own = [run for run in runs if run.script == script]
        done = {entry["id"] for run in own for entry in run.results["configs"]}
        numbers = [number for number in range(1, len(text.configs) + 1)
                   if f"config_{number}" not in done]
        resnet = task_number(text.task) == 4
        if not own:
            out = command_path(Path(modelset) / Path(text.out).name)
            command = (f"python {command_path(KIT / script)} --data-dir DIR"
                       + ("" if out == text.out else f" --out {out}"))
            missing.append(f"- `{script}` ({text.task}): no results; run `{command}`"
                           f"{cpu_time(text.configs, 50000, command, resnet)}.")
        elif numbers:
            words = own[-1].results.get("command", "").split()  # its flags, but these:
            flags = " ".join(words[words.index(script) + 1:] if script in words else [])
            flags = re.sub(r"(?<!\S)--(configs|out)(=| +)\S+|(?<!\S)--restart(?!\S)", "", flags)
            world = own[-1].results.get("world_size", 1)
            command = " ".join([f"torchrun --standalone --nproc-per-node={world}" if world > 1
                                else "python", command_path(KIT / script), *flags.split(),
                                "--out", command_path(own[-1].path.parent), "--configs",
                                ",".join(map(str, numbers))])
            missing.append(f"- `{script}`: config(s) {', '.join(map(str, numbers))} of its "
                           f"CONFIGS have no results in any folder; to add them beside the "
                           f"results of `{own[-1].name}` (same data and flags, so nothing is "
                           f"moved aside): `{command}`" + cpu_time(
                               [text.configs[number - 1] for number in numbers],
                               own[-1].results["data"]["train_images"], command, resnet) + ".")
    data_help = [DATA_HELP, ""] if any("--data-dir DIR" in line for line in missing) else []
    return ["## Not run yet", ""] + (data_help + [TIME_HELP, ""] + missing if missing else [
        "Every script and every config has results.", ""]) + [""]


def write_report(modelset, runs, skipped, scripts):
    """Write REPORT.md and figures/ into ``modelset`` from load_runs' output; returns REPORT.md's
    path, raises OSError where a file cannot be written."""
    modelset = Path(modelset)
    held = store.lock(modelset, blocking=False)  # one report at a time is written here
    if held is None:
        print(f"Waiting for another make_report.py to finish writing into {modelset}/.",
              file=sys.stderr, flush=True)
        held = store.lock(modelset, blocking=True)
    staging = modelset / f".report-{secrets.token_hex(4)}"  # all of it, then three renames
    try:
        for left in modelset.iterdir():  # what a kill -9 left of an earlier one
            if STAGING.fullmatch(left.name) and left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
        (staging / "figures").mkdir(parents=True)
        _write_report(modelset, runs, skipped, scripts, staging)
    finally:  # what is left of the staging and the earlier figures
        for left in (staging, modelset / f".figures-old-{staging.name}"):
            shutil.rmtree(left, ignore_errors=True)
        os.close(held)
    return modelset / "REPORT.md"


def _write_report(modelset, runs, skipped, scripts, staging):
    figures = staging / "figures"
    lines = [f"{REPORT_HEADER} `{modelset}`", "",
             f"Written by `python {command_path(KIT / 'make_report.py')} --modelset "
             f"{command_path(modelset)}` on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {len(runs)} results file(s)"
             f"{f' ({len(skipped)} skipped, listed below)' if skipped else ''}. "
             "Accuracies are percentages on each run's test set. The gap is the final training "
             "accuracy in eval mode (on up to 5,000 fixed training images, measured as the test "
             "accuracy is) minus the final test accuracy, in percentage points; the running "
             "training accuracy (the mean over the last epoch, the weights changing, dropout "
             "on) is shown beside it. With several seeds a cell shows mean ± std.", ""]
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
    for number in sorted({task_number(run.task) for run in runs}):  # read_scripts: all numbered
        task_runs = [run for run in runs if task_number(run.task) == number]
        for run in task_runs:
            lines += _run_section(run, modelset, figures)
        lines += sections.get(number, lambda *_: [])(task_runs, runs, figures, scripts)
    text = "\n".join(lines + _not_run_section(runs, scripts, modelset)) + "\n"
    write_atomically(staging / "REPORT.md", lambda file: file.write(text.encode()))
    old, shown = modelset / f".figures-old-{staging.name}", modelset / "figures"
    with signals.deferred():  # REPORT.md and figures/ swap together, or not at all
        done = []  # the renames made, undone last first where a later one fails
        try:  # an earlier figures/ (not a file or a link: make_report refuses those) aside
            for source, target in ([(shown, old)] if shown.is_dir() else []) + [
                    (figures, shown), (staging / "REPORT.md", modelset / "REPORT.md")]:
                os.replace(source, target)
                done.insert(0, (target, source))
        except OSError:  # the earlier figures back beside the earlier REPORT.md
            for source, target in done:
                os.replace(source, target)
            raise
