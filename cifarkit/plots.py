"""Figures readable on their own: titles, axis labels with units, legends naming the configs,
and the same colour for a config (config_N) in every figure."""
import io
import textwrap

import numpy as np

PLOTS = (  # file, history key, y-axis label
    ("loss.png", "train_loss", "training loss (cross-entropy, mean per image)"),
    ("train_accuracy.png", "train_accuracy", "training accuracy (%)"),
    ("test_accuracy.png", "test_accuracy", "test accuracy (%)"),
)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, works without a display
    import matplotlib.pyplot as plt

    return plt


def color(config_id):
    """config_N gets the N-th colour (tab10, then Dark2: 18 distinct), in every figure."""
    plt = pyplot()
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    return palette[(int(config_id.split("_")[1]) - 1) % len(palette)]


def png_bytes(figure):
    """The figure as PNG bytes (the caller writes them atomically)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # keeps the legend
    pyplot().close(figure)
    return buffer.getvalue()


def add_legend(axes):
    """The legend under the plot, long config labels wrapped, so it never hides a curve."""
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        axes.legend(handles, [textwrap.fill(label, 100) for label in labels], fontsize=7,
                    loc="upper center", bbox_to_anchor=(0.5, -0.13))


def group_runs(entries):
    """{config id: [entries, one per seed]}, in config order."""
    groups = {}
    for entry in entries:
        groups.setdefault(entry["id"], []).append(entry)
    return groups


def mean_curve(runs, key):
    """(epochs, mean, std) of ``key`` over the runs of one config, epoch by epoch."""
    length = max(len(run["history"]) for run in runs)
    values = np.full((len(runs), length), np.nan)
    for row, run in enumerate(runs):
        for column, record in enumerate(run["history"]):
            if record.get(key) is not None:
                values[row, column] = record[key]
    with np.errstate(all="ignore"):
        return (np.arange(1, length + 1), np.nanmean(values, axis=0),
                np.nanstd(values, axis=0))


def draw_config_curves(axes, entries, key, label_of, x_key=None):
    """One line per config (the mean over its seeds) with a band of one std when seeds > 1."""
    for config_id, runs in group_runs(entries).items():
        if not any(run["history"] for run in runs):
            continue
        epochs, mean, std = mean_curve(runs, key)
        x = epochs if x_key is None else mean_curve(runs, x_key)[1]
        seeds = f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""
        axes.plot(x, mean, color=color(config_id), marker="o" if len(x) < 30 else None,
                  markersize=3, label=label_of(runs[0]) + seeds)
        if len(runs) > 1:
            axes.fill_between(x, mean - std, mean + std, color=color(config_id), alpha=0.2)


def history_figure(entries, key, title, y_label, label_of):
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    draw_config_curves(axes, entries, key, label_of)
    axes.set(title=title, xlabel="epoch", ylabel=y_label)
    axes.grid(alpha=0.3)
    add_legend(axes)
    return figure


def batch_loss_figure(entries, title, log_every, label_of):
    """The loss printed every ``log_every`` mini-batches, against (fractional) epochs."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for entry in entries:
        points = entry.get("batch_losses", [])
        x = [point["epoch"] - 1 + point["batch"] / entry["steps_per_epoch"] for point in points]
        seed = f" (seed {entry['seed']})" if len(entries) > 1 else ""
        axes.plot(x, [point["loss"] for point in points], marker="o", markersize=3,
                  color=color(entry["id"]), label=label_of(entry) + seed)
    axes.set(title=title, xlabel="epoch", ylabel=f"training loss (mean of {log_every} mini-batches)")
    axes.grid(alpha=0.3)
    add_legend(axes)
    return figure


def examples_figure(images, labels, predictions, class_names, title):
    """A grid of test images, each titled with its true and predicted class."""
    plt = pyplot()
    columns = 8
    rows = -(-len(images) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.4, rows * 1.6))
    for axes, image, label, predicted in zip(grid.flat, images, labels, predictions):
        axes.imshow(image.permute(1, 2, 0).numpy())
        right = int(label) == int(predicted)
        axes.set_title(f"{class_names[label]}\n-> {class_names[predicted]}", fontsize=7,
                       color="black" if right else "red")
    for axes in grid.flat:
        axes.axis("off")
    figure.suptitle(f"{title}\n(true class -> predicted; red: wrong)", fontsize=9)
    return figure


def confusion_figure(matrix, class_names, title):
    """Rows: true class; columns: predicted class; each row in percent of that class."""
    plt = pyplot()
    matrix = np.asarray(matrix, dtype=float)
    percent = 100 * matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(7, 6))
    shown = axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            axes.text(column, row, f"{percent[row, column]:.0f}", ha="center", va="center",
                      fontsize=7, color="white" if percent[row, column] > 50 else "black")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axes.set(title=title, xlabel="predicted class", ylabel="true class")
    figure.colorbar(shown, label="% of the true class")
    return figure
