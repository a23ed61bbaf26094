"""Figures readable on their own: titles, axis labels with units, legends naming the configs,
and the same colour for a config (config_N) in every figure."""
import io
import json
import os
import re
import textwrap
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

from .results import CLASSES, NAMING_KEYS, config_label, group_runs, write_atomically

PLOTS = (  # file, history key, y-axis label, smallest y span shown (so noise looks like noise)
    ("loss.png", "train_loss", "training loss (cross-entropy, mean per image)", 0.2),
    ("train_accuracy.png", "train_accuracy_eval", "training accuracy (%)", 5.0),
    ("test_accuracy.png", "test_accuracy", "test accuracy (%)", 5.0),
)
ACCURACY_SPAN = 5.0  # percentage points: the least y range of an accuracy or gap axis
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = "osD^v<>ph*"
SIGNATURE = "cifarkit"  # the PNGs' Software text: how draw_views knows its own files
MIXED_NOTE = "RUNS ON DIFFERENT NUMBERS OF IMAGES ARE SHOWN TOGETHER: compare with care"
STRENGTHS = {"weight_decay": ("weight decay", 1e-4, True),  # Task 2's regularisers: axis name,
             "dropout": ("dropout probability", 0.5, False)}  # the report's strength, log axis
SWEEP_AXES = (("lr", "learning rate", True), ("momentum", "momentum", False),
              ("batch_size", "batch size", True))  # Task 3: key, axis name, log scale


def pyplot():
    """pyplot on Agg, MPLBACKEND hidden from the import: Jupyter's inline one fails in `!python`."""
    backend = os.environ.pop("MPLBACKEND", None)
    try:
        import matplotlib
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # a "$" in a name or path is text, not TeX
    import matplotlib.pyplot as plt

    return plt


def color(config_id):
    """config_N gets the N-th colour (tab10, then Dark2: 18 distinct), in every figure."""
    palette = [*pyplot().get_cmap("tab10").colors, *pyplot().get_cmap("Dark2").colors]
    return palette[(int(config_id.split("_")[1]) - 1) % len(palette)]


def tab10(index):
    return pyplot().get_cmap("tab10").colors[index % 10]


def line_style(index, points):
    """A line style and sparse hollow markers, offset per curve: coinciding curves stay visible."""
    every = max(1, points // 12)
    return {"linestyle": LINE_STYLES[index % len(LINE_STYLES)],
            "marker": MARKERS[index % len(MARKERS)], "markersize": 5,
            "markerfacecolor": "none", "markevery": (index % every, every)}


def png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight",  # keeps the legend
                   metadata={"Software": SIGNATURE})
    pyplot().close(figure)
    return buffer.getvalue()


def save(figure, path):
    """The figure as a PNG at ``path``, written whole or not at all; returns ``path``."""
    content = png_bytes(figure)
    write_atomically(path, lambda file: file.write(content))
    return path


def differing_keys(configs):
    """Keys all configs hold with differing values (one some lack is another script's setting)."""
    keys = []
    for config in configs:
        keys += [key for key in config if key not in keys and key not in NAMING_KEYS]
    return [key for key in keys if all(key in config for config in configs)
            and len({repr(config[key]) for config in configs}) > 1]


def short_labels(entries):
    """{config id: legend label} with only the settings that differ between the configs."""
    first = {entry["id"]: entry["config"] for entry in entries}
    differing = differing_keys(list(first.values()))
    return {config_id: legend_label(config_id, config, differing)
            for config_id, config in first.items()}


def legend_label(config_id, config, differing):
    """'config_3 (name): lr=0.001, momentum=0.95', the settings named in ``differing``."""
    name = f" ({config['name']})" if "name" in config else ""
    shown = ", ".join(f"{key}={config[key]}" for key in differing)
    return config_id + name + (f": {shown}" if shown else "")


def mean_curve(runs, key):
    """(epochs, mean, std) of ``key`` over the runs of one config, epoch by epoch."""
    length = max(len(run["history"]) for run in runs)
    values = np.array([[record.get(key) for record in run["history"]]  # None: NaN, as a gap
                       + [None] * (length - len(run["history"])) for run in runs], dtype=float)
    with warnings.catch_warnings():  # an epoch no run has measured yet: NaN, said by the gap
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.arange(1, length + 1), np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def draw_mean(axes, curve, runs, label, style):
    """A config's (x, mean, std) over its seeds' ``runs``, in a band of one std if several."""
    x, mean, std = curve
    seeds = f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""
    axes.plot(x, mean, label=label + seeds, **style)
    if len(runs) > 1:
        axes.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15,
                          label=f"{runs[0]['id']}: ±1 std over {len(runs)} seeds")


def draw_config_curves(axes, entries, key, labels):
    """One line per config (the mean over its seeds, see draw_mean). ``labels``: {id: label}."""
    for index, (config_id, runs) in enumerate(group_runs(entries).items()):
        if not any(run["history"] for run in runs):
            continue
        x, mean, std = mean_curve(runs, key)
        draw_mean(axes, (x, mean, std), runs, labels[config_id],
                  dict(line_style(index, len(x)), color=color(config_id)))
        if len(x) == 1 and labels[config_id]:  # one epoch: a point, with its value beside it
            axes.annotate(f"{mean[0]:.3g}", (x[0], mean[0]), xytext=(6, 0),
                          textcoords="offset points", va="center", fontsize=8,
                          color=color(config_id))


def epoch_axis(axes, last_epoch, y_label):
    """An epoch x axis with ticks at whole numbers only, and room for a run of one epoch."""
    from matplotlib.ticker import MaxNLocator

    axes.set(xlabel="epoch", ylabel=textwrap.fill(y_label, 45))  # longer runs off the axes
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    low, high = axes.get_xlim()
    axes.set_xlim(min(low, 0.5), max(high, last_epoch + 0.5))


def finish(axes, span=ACCURACY_SPAN):
    """y axis at least ``span`` high, so noise looks like noise; legend below, hiding no curve."""
    low, high = axes.get_ylim()
    if high - low < span:
        middle = (low + high) / 2
        axes.set_ylim(middle - span / 2, middle + span / 2)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        axes.legend(handles, [textwrap.fill(label, 90) for label in labels], fontsize=8,
                    loc="upper center", bbox_to_anchor=(0.5, -0.13))


def subtitle(run, entries):
    """'2,000 training / 400 test images · device · precision', then the source's last folders."""
    data = run["data"]
    precisions = sorted({entry["precision"] for entry in entries if entry.get("precision")})
    source = re.sub(r"(?:[^\s,;()]*/)+([^/\s,;()]+)/?", r"\1", data["source"])
    return (" · ".join([f"{data['train_images']:,} training / {data['test_images']:,} test "
                        f"images", ", ".join(run["devices"])] + precisions) + f"\n{source}")


def titled(axes, title, note):
    lines = [title] + [textwrap.fill(line, 110) for line in (note or "").splitlines()]
    axes.set_title("\n".join(lines), fontsize=10)


def last_epoch(entries):
    return max((len(entry["history"]) for entry in entries), default=1)


def history_figure(entries, key, title, y_label, span, note=None, sample=None):
    """One curve per config per epoch ("batch_losses": per seed, every log_every mini-batches);
    training accuracy: eval mode on ``sample`` fixed images, the logs' running one faint."""
    figure, axes = pyplot().subplots(figsize=(9, 5.5))
    labels = short_labels(entries)
    if key == "batch_losses":
        for index, entry in enumerate(entries):
            points = entry.get("batch_losses", [])
            x = [point["epoch"] - 1 + point["batch"] / entry["steps_per_epoch"] for point in points]
            seed = f" (seed {entry['seed']})" if len(entries) > 1 else ""
            axes.plot(x, [point["loss"] for point in points], color=color(entry["id"]),
                      label=labels[entry["id"]] + seed, **line_style(index, len(x)))
    else:
        draw_config_curves(axes, entries, key, labels)
    if key == "train_accuracy_eval":
        start, bands = len(axes.lines), len(axes.collections)
        draw_config_curves(axes, entries, "train_accuracy", {i: "" for i in labels})
        for line in axes.lines[start:]:  # a lone epoch keeps a small dot, else it is not seen
            line.set(alpha=0.35, linewidth=1, label="_running",
                     marker="." if len(line.get_xdata()) == 1 else "")
        for collection in axes.collections[bands:]:
            collection.remove()
        with_dropout = [entry["config"].get("dropout", 0) > 0 for entry in entries]
        dropout = ("" if not any(with_dropout) else ", dropout on" if all(with_dropout)
                   else ", dropout on where the config has it")
        axes.plot([], [], color="grey", alpha=0.35, label="faint, same colour: the running "
                  f"mean during each epoch (weights changing{dropout}), as the logs print it")
        on = f" on {sample:,} fixed training images" if sample else " on fixed training images"
        y_label = f"training accuracy (%), eval mode{on}"
    titled(axes, title, note)
    epoch_axis(axes, last_epoch(entries), y_label)
    finish(axes, span)
    return figure


def examples_figure(images, labels, predictions, class_names, title):
    """Test images captioned true -> predicted, one mosaic: fast enough to redraw per new best."""
    columns = 8
    cell_width, cell_height, top_margin = 40, 50, 16  # pixels, around each 32x32 image
    rows = -(-len(images) // columns)
    mosaic = np.full((rows * cell_height, columns * cell_width, 3), 255, dtype=np.uint8)
    title = "\n".join(textwrap.fill(line, 120) for line in  # a long config: no wider than
                      f"{title}\n(true class -> predicted; red: wrong)".splitlines())  # the grid
    top = 0.16 * (title.count("\n") + 1) + 0.2  # inches above the grid, for the title's lines
    figure = pyplot().figure(figsize=(columns * 1.4, rows * 1.6 + top))
    axes = figure.add_axes((0.01, 0.01, 0.98, 1 - top / (rows * 1.6 + top)))
    for index, (image, label, predicted) in enumerate(zip(images, labels, predictions)):
        row, column = divmod(index, columns)
        top, left = row * cell_height + top_margin, column * cell_width + 4
        mosaic[top:top + 32, left:left + 32] = np.asarray(image).transpose(1, 2, 0)
        right = int(label) == int(predicted)
        axes.text(left + 16, top - 1.5, f"{class_names[label]}\n-> {class_names[predicted]}",
                  ha="center", va="bottom", fontsize=7, color="black" if right else "red")
    axes.imshow(mosaic, interpolation="nearest")
    axes.set_anchor("N")  # the grid right under the title
    axes.axis("off")
    figure.suptitle(title, fontsize=9)
    return figure


def rounded_rows(percent):
    """Whole percentages whose rows add up to 100 as the exact ones do (largest remainder)."""
    floors = np.floor(percent)
    for row, exact in enumerate(percent):
        missing = int(round(exact.sum() - floors[row].sum()))
        for column in np.argsort(floors[row] - exact)[:missing]:
            floors[row, column] += 1
    return floors


def confusion_figure(matrix, class_names, title):
    """Rows: true class; columns: predicted class; each row in percent of that class."""
    matrix = np.asarray(matrix, dtype=float)
    percent = 100 * matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shown_percent = rounded_rows(percent)
    figure, axes = pyplot().subplots(figsize=(7, 6))
    shown = axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            axes.text(column, row, f"{shown_percent[row, column]:.0f}", ha="center", va="center",
                      fontsize=7, color="white" if percent[row, column] > 50 else "black")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axes.set(title=title, xlabel="predicted class", ylabel="true class")
    figure.colorbar(shown, label="% of the true class")
    return figure


def draw_views(out_dir, results, examples=None):
    """A results JSON's PLOTS, and examples.png from ``examples`` (store.examples), in ``out_dir``.
    The user's own PNGs are moved aside; returns the lines that say so."""
    entries, log_every = results["configs"], results.get("log_every") or 0
    title = Path(results["script"]).stem
    note = subtitle(results, entries)
    data = results["data"]
    sample = min(data["train_images"], data["test_images"], 5000)  # as train_sample chooses
    figures = {}  # examples.png first: the others drawn after the JSON say all were
    if examples is not None:
        images, labels, predictions, best = examples
        correct = int((np.asarray(labels) == np.asarray(predictions)).sum())
        figures["examples.png"] = examples_figure(
            images, [int(label) for label in labels], [int(p) for p in predictions], CLASSES,
            f"{title}, {config_label(best)}\n{correct} of these {len(labels)} right; "
            f"{best['final_test_accuracy']:.1f}% of all {data['test_images']:,} test images")
    batches = log_every and any(entry.get("batch_losses") for entry in entries)
    for file_name, key, y_label, span in PLOTS:  # sample: used by train_accuracy_eval alone
        shown = (key, f"{title}: {y_label.split(' (')[0]}", y_label)
        if file_name == "loss.png" and batches:
            shown = ("batch_losses", f"{title}: loss every {log_every} mini-batches",
                     f"training loss (mean of {log_every} mini-batches)")
        figures[file_name] = history_figure(entries, *shown, span, note, sample)
    out_dir, kept = Path(out_dir), []
    for path in (out_dir / name for name in ("examples.png", *figures)):
        if path.is_file() and not path.is_symlink() and not drawn_by_kit(path):
            aside = path.with_name(f"{path.stem}.yours-{datetime.now():%Y%m%d-%H%M%S-%f}.png")
            os.replace(path, aside)
            kept.append(f"{path} was not drawn by this kit: kept as {aside.name}")
    if examples is None:  # it showed a run no config shows now
        (out_dir / "examples.png").unlink(missing_ok=True)
    for file_name, figure in figures.items():
        save(figure, out_dir / file_name)
    return kept


def drawn_by_kit(path):
    """Whether ``path`` is a PNG this kit drew: its Software text, or older kits' Matplotlib."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return False
    return any(f"Software\x00{name}".encode() in head for name in (SIGNATURE, "Matplotlib"))


def with_derived(entries):
    """Copies of the entries whose history also holds the gap and the elapsed seconds."""
    return [dict(entry, history=[dict(
        record, elapsed=float(seconds), gap=None if None in (
            record.get("test_accuracy"), record["train_accuracy_eval"])
        else record["train_accuracy_eval"] - record["test_accuracy"])
        for record, seconds in zip(entry["history"], np.cumsum(
            [record["seconds"] for record in entry["history"]]))]) for entry in entries]


def time_curve(entries):
    """(cumulative training seconds, test accuracy, its std) per epoch: means over seeds."""
    derived = with_derived(entries)
    _, accuracy, std = mean_curve(derived, "test_accuracy")
    return mean_curve(derived, "elapsed")[1], accuracy, std


def first_reach(curve, target):
    """(epoch, cumulative seconds) where a time_curve first reaches ``target``, or None."""
    with np.errstate(invalid="ignore"):  # an epoch without a test accuracy never reaches it
        reached = np.flatnonzero(curve[1] >= target - 1e-9)  # 65.75 held as 65.7499999
    return (int(reached[0]) + 1, float(curve[0][reached[0]])) if len(reached) else None


def gap_figure(task_runs):
    """Task 2: train − test accuracy per epoch, control beside regularised, a panel per Run."""
    figure, panels = pyplot().subplots(
        1, len(task_runs), figsize=(7 * len(task_runs), 5.5), squeeze=False, sharey=True,
        layout="constrained")
    for axes, run in zip(panels[0], task_runs):
        entries = run.results["configs"]
        draw_config_curves(axes, with_derived(entries), "gap", short_labels(entries))
        axes.axhline(0, color="grey", linewidth=0.8)
        titled(axes, f"{run.task} ({run.name})", subtitle(run.results, entries))
        epoch_axis(axes, last_epoch(entries), "generalisation gap: train − test accuracy (points)")
        finish(axes)
    figure.suptitle("Task 2: does regularisation shrink the gap between train and test accuracy?"
                    "\n(train accuracy in eval mode on a fixed sample of training images, "
                    "measured like the test accuracy)", fontsize=11)
    return figure


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


def strength_figure(run, key, points, spreads, strength):
    """The final gap and test accuracy (``spreads``: [(mean, std)] of each per point) against
    the strength of ``key`` that ``points`` sweep; ``strength``: STRENGTHS[key]."""
    name, chosen, log = strength
    strengths = [value for value, _ in points]
    smallest = min([value for value in strengths if value > 0] + [chosen])
    x = [value if value > 0 or not log else smallest / 10 for value in strengths]
    figure, panels = pyplot().subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for axes, spread, label in zip(panels, spreads, (
            "final gap: train (eval mode) − test (points)", "final test accuracy (%)")):
        axes.errorbar(x, [mean for mean, _ in spread], yerr=[std for _, std in spread],
                      marker="o", capsize=4, label="mean ± std over seeds")
        axes.axvline(chosen, color="grey", linestyle="--", label=f"the report's {name}: {chosen:g}")
        axes.set_xscale("log" if log else "linear")
        axes.set_xticks(x, [f"{value:g}" for value in strengths])
        axes.minorticks_off()
        axes.set(xlabel=f"{name} ({key})" + (" — 0 drawn at the far left" if log else ""),
                 ylabel=label)
        finish(axes)
    figure.suptitle(f"{run.task} ({run.name}): how strong must it be?\n"
                    f"{subtitle(run.results, points[0][1])}; seeds per strength: "
                    f"{', '.join(map(str, sorted({len(entries) for _, entries in points})))}",
                    fontsize=10)
    return figure


def sweep_axes(run):
    """The SWEEP_AXES on which ``run``'s configs hold two values or more (one is a lone dot)."""
    configs = [entries[0]["config"] for entries in run.groups.values()]
    return [axis for axis in SWEEP_AXES if len({config[axis[0]] for config in configs}) > 1]


def sweep_figure(sweep_runs):
    """Task 3: final test accuracy, a row per report.Run, a panel per sweep_axes setting; None
    when no run varies one. A line joins the configs that differ only in the panel's setting."""
    rows = [(run, axes) for run in sweep_runs if (axes := sweep_axes(run))]
    if not rows:
        return None
    columns = max(len(axes) for _, axes in rows)
    figure, grid = pyplot().subplots(len(rows), columns, figsize=(6 * columns + 1, 6 * len(rows)),
                                     squeeze=False, layout="constrained")
    starred = False
    for row, (run, sweep) in zip(grid, rows):
        configs = [entries[0]["config"] for entries in run.groups.values()]
        for axes in row[len(sweep):]:
            axes.remove()
        for axes, (key, name, log) in zip(row, sweep):
            others = [other for other in differing_keys(configs) if other != key]
            lines = {}  # {other settings: [(config, its seeds' final test accuracies)]}
            for entries in run.groups.values():
                config = entries[0]["config"]
                lines.setdefault(tuple((other, config.get(other)) for other in others), []).append(
                    (config, [entry["final_test_accuracy"] for entry in entries]))
            for index, (line_key, members) in enumerate(lines.items()):
                members, finals = zip(*sorted(members, key=lambda member: member[0][key]))
                names = [config["name"] for config in members if "name" in config]
                axes.errorbar([config[key] for config in members],
                              [np.mean(values) for values in finals], capsize=3,
                              color=tab10(index), yerr=[np.std(values) for values in finals]
                              if max(map(len, finals)) > 1 else None,
                              label=", ".join(names) or ", ".join(
                                  f"{k}={v}" for k, v in line_key) or "all configs",
                              **line_style(index, 1))
                reported = [(config[key], config["reported_accuracy"]) for config in members
                            if "reported_accuracy" in config]
                if reported:
                    axes.plot(*zip(*reported), linestyle="none", marker="*", markersize=11,
                              color=tab10(index), alpha=0.7)
            if any("reported_accuracy" in config for config in configs):  # stars drawn
                starred = True
                axes.plot([], [], linestyle="none", marker="*", color="grey", markersize=11,
                          label="the report's accuracy (50,000 training images)")
            values = sorted({config[key] for config in configs})
            axes.set_xscale("log" if log else "linear")
            axes.set_xticks(values, [f"{value:g}" for value in values])  # only values run
            axes.minorticks_off()
            for label in axes.get_xticklabels() if len(values) > 5 else []:
                label.set(rotation=45, ha="right")  # many values: tilted, not overlapping
            axes.set(xlabel=name + (" (log scale)" if log else ""),
                     ylabel="final test accuracy (%)")
            axes.set_title(f"final test accuracy against {name}", fontsize=10)
            finish(axes)
        row[0].set_title(f"{run.name}: {subtitle(run.results, run.results['configs'])}"
                         f"\nfinal test accuracy against {sweep[0][1]}", fontsize=10)
    figure.suptitle(f"Task 3 ({', '.join(sorted({run.script for run, _ in rows}))}): final "
                    "test accuracy of each config; a line joins configs that differ only in the "
                    "setting on its x axis" + ("; ★ the report's accuracy for that config"
                                               if starred else ""), fontsize=11)
    return figure


def time_figure(curves, stars, best, title, note, corner):
    """Test accuracy against cumulative seconds, a mean ± std per curve (label prefix, report.Run,
    one config's entries, style), a dot where it first reaches ``best`` ((accuracy, config id));
    ``stars``: the report's (seconds, accuracy, colour, label); ``corner``: a top-left note."""
    figure, axes = pyplot().subplots(figsize=(11, 6.5))
    mixed = len({run.images for _, run, _, _ in curves}) > 1
    differing = differing_keys([entries[0]["config"] for _, _, entries, _ in curves])
    seconds = [star[0] for star in stars]
    for index, (prefix, run, entries, style) in enumerate(curves):
        x, y, std = time_curve(entries)
        style, seconds = dict(line_style(index, len(x)), **style), seconds + list(x)
        draw_mean(axes, (x, y, std), entries, prefix + legend_label(
            entries[0]["id"], entries[0]["config"], differing)
            + (f" [{run.results['data']['train_images']:,} images]" if mixed else ""), style)
        reach = first_reach((x, y, std), best[0]) if best else None
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
    corner = "\n".join(line for line in (corner, MIXED_NOTE if mixed else None) if line)
    axes.text(0.01, 0.99, corner, transform=axes.transAxes, va="top", fontsize=8,
              color="darkred" if mixed else "black")
    seconds = [value for value in seconds if value > 0]
    if seconds and max(seconds) / min(seconds) > 30:  # LeNet's seconds beside hours
        axes.set_xscale("log")
    log = ", log scale" if axes.get_xscale() == "log" else ""
    axes.set(xlabel=f"training time (s, cumulative{log})", ylabel="test accuracy (%)")
    titled(axes, title, note)
    finish(axes)
    return figure


def task3_time_figure(shown, best):
    """time_figure of every finished config of report.Runs ``shown``; ``best``: reported_lenet."""
    return time_figure(
        [(f"{run.name}: " if len(shown) > 1 else "", run, entries, {"color": color(config_id)})
         for run in shown for config_id, entries in run.groups.items()], [], best,
        "Task 3: test accuracy against training time, every finished config",
        subtitle(shown[0].results, [entry for entries in shown[0].groups.values()
                                    for entry in entries])
        if len(shown) == 1 else f"folders {', '.join(run.name for run in shown)}; each "
        "timed on its own device(s)", None)


def task4_time_figure(shown, resnet_runs):
    """time_figure of each Run's best; colour: script; ``resnet_runs`` solid, LeNet dashed."""
    order = list(dict.fromkeys(run.script for run in shown))
    curves = [(f"{'ResNet-18' if run in resnet_runs else 'LeNet'} {run.name}: ", run, run.best,
               {"color": tab10(order.index(run.script)),
                "linestyle": "-" if run in resnet_runs else "--"}) for run in shown]
    stars = [(run.best[0]["config"]["reported_seconds"],
              run.best[0]["config"]["reported_accuracy"], style["color"],
              f"the report's {run.best[0]['id']}, on one A100 (50,000 images): other hardware, "
              f"its time not comparable with ours") for _, run, _, style in curves
             if {"reported_seconds", "reported_accuracy"} <= run.best[0]["config"].keys()]
    return time_figure(curves, stars, None, "Task 4: test accuracy against training time", None,
                       "the best config of each folder; colour: script; solid: ResNet-18, "
                       "dashed: LeNet")


def earlier_figure(title, histories):
    """Test accuracy per epoch of ``histories`` ([(history, label)]): earlier dashed, last now."""
    figure, axes = pyplot().subplots(figsize=(9, 5.5))
    for index, (history, label) in enumerate(histories):
        axes.plot([point["epoch"] for point in history],
                  [point["test_accuracy"] for point in history],
                  marker="o" if len(history) == 1 else None, label=label, **(
                      dict(color="black", linewidth=2) if index == len(histories) - 1
                      else dict(alpha=0.8, linestyle="--")))
    axes.set_title(title)
    epoch_axis(axes, max(len(history) for history, _ in histories), "test accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure
