"""make_report.py on a small modelset made by the real scripts on generated data."""
import ast
import contextlib
import errno
import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import matplotlib.text
import pytest
from matplotlib.figure import Figure
from PIL import Image

import make_report
from conftest import REPO, hand_made_sweep, rewrite
from cifarkit import plots, report, results

L2_CONFIGS = [
    {"name": "control", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32},
    {"name": "l2", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32,
     "weight_decay": 1e-3},
]
SWEEP_CONFIGS = [
    {"num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32},
    {"num_epochs": 2, "lr": 1e6, "momentum": 0.9, "batch_size": 32},  # diverges
]


@pytest.fixture(scope="module")
def modelset(tmp_path_factory, pickled_data):
    """Trained once for the whole file (three runs of the scripts); a test that damages it
    works on a copy."""
    root = tmp_path_factory.mktemp("report") / "modelset"
    l2 = importlib.import_module("L2_regularization")
    sweep = importlib.import_module("Original_version_model_multiGPU")
    common = ["--data-dir", str(pickled_data), "--device", "cpu"]
    out = ["--out", str(root / "L2_regularization_model")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(l2, "CONFIGS", L2_CONFIGS)
        patch.setattr(sweep, "CONFIGS", SWEEP_CONFIGS)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert l2.main(common + out + ["--configs", "control", "--seeds", "2"]) == 0
        (root / "seeded_run.log").write_text(printed.getvalue())  # for the summary test
        assert l2.main(common + out + ["--configs", "l2"]) == 0
        assert sweep.main(common + ["--out", str(root / "original_version_model_multiGPU")]) == 1
    return root


# The PNGs are built, not rendered (conftest's unrendered: rendering is most of what a
# make_report costs here), except in the tests that ask for rendered.
pytestmark = pytest.mark.usefixtures("unrendered")


def copy_of(modelset, tmp_path):
    """The scripts' folders, without an earlier report, for a test to damage."""
    copy = tmp_path / "modelset"
    shutil.copytree(modelset, copy, ignore=shutil.ignore_patterns("REPORT.md", "figures"))
    return copy




def record_figures(monkeypatch):
    """[figure] for every figure saved from now on (matplotlib's own savefig), to read its
    panels and legend; figure_of picks out one of the report's."""
    drawn = []
    savefig = Figure.savefig

    def recording(figure, *args, **kwargs):
        drawn.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return drawn


TIME_FIGURE = "task3_accuracy_vs_time.png"
TITLES = {"task2_gap.png": "Task 2: does regularisation shrink the gap",
          "task3_sweep.png": "Task 3 (Original_version_model_multiGPU.py): final test accuracy",
          TIME_FIGURE: "Task 3: test accuracy against training time",
          "task4_accuracy_vs_time.png": "Task 4: test accuracy against training time"}


def figure_of(drawn, name):
    """The one figure drawn for figures/``name``, known by its title as a reader knows it."""
    (figure,) = [figure for figure in drawn if (
        figure.get_suptitle() or figure.axes[0].get_title()).startswith(TITLES[name])]
    return figure


def test_seeds_are_kept_apart_and_summarised(modelset):
    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    runs = [(entry["id"], entry["seed"], entry["weights"]) for entry in results["configs"]]
    assert runs == [("config_1", 0, "config_1.pth"), ("config_1", 1, "config_1_seed1.pth"),
                    ("config_2", 0, "config_2.pth")]
    assert (results["configs"][0]["history"] != results["configs"][1]["history"])
    printed = (modelset / "seeded_run.log").read_text()
    assert "2 seeds: final test accuracy" in printed and "(mean ± std over 2)" in printed


@pytest.mark.usefixtures("rendered")
def test_report_has_every_config_valid_figures_and_the_missing_scripts(modelset):
    assert make_report.main(["--modelset", str(modelset)]) == 0
    text = (modelset / "REPORT.md").read_text()

    for row in ("| config_1 (control) |", "| config_2 (l2) |"):
        assert row in text
    sweep_rows = [line for line in text.splitlines() if line.startswith("| config_")
                  and "batch_size=32, weight_decay=0.0 |" in line and "lr=" in line]
    assert any("**DIVERGED**" in line for line in sweep_rows)
    assert any("| finished |" in line and "lr=0.01," in line for line in sweep_rows)

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "figures/task2_gap.png" in links
    # one finished sweep config: a panel would be a lone dot, so no figure, and why
    assert "figures/task3_sweep.png" not in links and "No sweep figure yet: it needs two" in text
    assert any(link.startswith("figures/confusion_") for link in links)
    for link in links:
        with Image.open(modelset / link) as image:  # a real picture, not an empty frame
            assert image.format == "PNG" and min(image.size) > 200, link

    missing = text.split("## Not run yet")[1]
    for script in ("Original_version_model.py", "Dropout_regularization.py", "Resnet_model.py"):
        assert f"`{script}`" in missing
    assert "L2_regularization.py" not in missing


def test_report_mean_and_std_of_the_seeded_config(modelset):
    make_report.main(["--modelset", str(modelset)])
    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    finals = [entry["final_test_accuracy"] for entry in results["configs"]
              if entry["id"] == "config_1"]
    expected = f"{np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f}"
    (row,) = [line for line in (modelset / "REPORT.md").read_text().splitlines()
              if line.startswith("| config_1 (control) |")]
    assert row.split(" | ")[3] == expected


def test_report_refuses_a_missing_folder(tmp_path, capsys):
    assert make_report.main(["--modelset", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_report_refuses_a_file_as_modelset(modelset, capsys):
    results = modelset / "L2_regularization_model" / "training_result.json"
    assert make_report.main(["--modelset", str(results)]) == 2
    assert "a file, not a folder" in capsys.readouterr().err


def test_a_corrupt_results_file_is_named_skipped_and_the_others_reported(modelset, tmp_path,
                                                                         capsys):
    root = copy_of(modelset, tmp_path)
    corrupt = root / "L2_regularization_model" / "training_result.json"
    corrupt.write_text('{"script": "L2_regularization.py", "configs": [')  # cut off mid-write
    assert make_report.main(["--modelset", str(root)]) == 0
    assert f"warning: {corrupt}: not valid JSON" in capsys.readouterr().err
    text = (root / "REPORT.md").read_text()
    assert "## Skipped results files" in text
    assert "- `L2_regularization_model/training_result.json`: not valid JSON" in text
    assert "## Task 3: LeNet hyper-parameter sweep" in text  # the other folder is still there
    assert "- `L2_regularization.py` (Task 2: LeNet + L2 regularisation): no results" in text


def _drop_key(key, index=0):
    return rewrite(lambda results: results["configs"][index].pop(key))


@pytest.mark.parametrize("damage, why", [
    (_drop_key("status", 1), "configs entry 2: 'status' is missing or not a string"),
    (_drop_key("history"), "configs entry 1: 'history' is missing or not a list"),
    (_drop_key("config"), "configs entry 1: 'config' is missing or not an object"),
    (rewrite(lambda results: results.update(configs={"config_1": {}})),
     "'configs' is missing or not a list"),
    (rewrite(lambda results: results.pop("data")), "'data' is missing or not an object"),
    (rewrite(lambda results: results["configs"][0].update(final_test_accuracy=None)),
     "configs entry 1: 'final_test_accuracy' is missing or not a number"),
    (rewrite(lambda results: results.update(script="My_model.py")),
     "not a results file of the kit's scripts ('script' is 'My_model.py')"),
    (lambda path: path.write_text("[1, 2, 3]"), "not a results file (it holds a list)"),
    (lambda path: path.write_bytes(b"\xff\xfe\x00\x01 binary"), "not valid JSON ('utf-8' codec"),
], ids=["entry-without-status", "entry-without-history", "entry-without-config",
        "configs-not-a-list", "no-data", "finished-without-accuracy", "unknown-script",
        "a-list", "not-utf8"])
def test_a_malformed_results_file_is_skipped_with_what_is_wrong(modelset, tmp_path, capsys,
                                                                damage, why):
    root = copy_of(modelset, tmp_path)
    bad = root / "L2_regularization_model" / "training_result.json"
    damage(bad)
    assert make_report.main(["--modelset", str(root)]) == 0
    assert f"warning: {bad}: {why}" in capsys.readouterr().err
    text = (root / "REPORT.md").read_text()
    assert f"- `L2_regularization_model/training_result.json`: {why}" in text
    assert "## Task 3: LeNet hyper-parameter sweep" in text


@pytest.mark.usefixtures("rendered")
def test_every_folder_of_a_script_gets_its_own_section_and_place_in_the_figures(
        modelset, tmp_path, monkeypatch):
    root = copy_of(modelset, tmp_path)
    # Copies named as a file manager names them; the second L2 folder holds config_2 only.
    second = root / "L2_regularization_model (run 2)"
    shutil.copytree(root / "L2_regularization_model", second)
    rewrite(lambda results: results.update(configs=results["configs"][2:]))(
        second / "training_result.json")
    shutil.copytree(root / "original_version_model_multiGPU", root / "sweep-run2")
    for folder in ("original_version_model_multiGPU", "sweep-run2"):  # finished configs that
        rewrite(hand_made_sweep)(root / folder / "training_result.json")  # differ in lr alone
    for folder in ("Resnet", "Resnet-run2"):  # LeNet results posing as ResNet-18's: cheap
        shutil.copytree(root / "L2_regularization_model", root / folder)
        rewrite(lambda results: results.update(script="Resnet_model.py"))(
            root / folder / "training_result.json")
    drawn = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(root)]) == 0
    text = (root / "REPORT.md").read_text()

    sections = [line for line in text.splitlines() if line.startswith("## Task 2: LeNet + L2")]
    assert sections == ["## Task 2: LeNet + L2 regularisation (`L2_regularization.py`), "
                        "`L2_regularization_model`",
                        "## Task 2: LeNet + L2 regularisation (`L2_regularization.py`), "
                        "`L2_regularization_model (run 2)`"]
    assert len([line for line in text.splitlines() if line.startswith("## Task 4: ResNet")]) == 2
    gap_rows = [line for line in text.splitlines() if line.startswith("| L2_regularization.py |")]
    assert [row.split(" | ")[1] for row in gap_rows] == [
        "L2_regularization_model", "L2_regularization_model", "L2_regularization_model (run 2)"]

    panels = [axes.get_title() for axes in figure_of(drawn, "task2_gap.png").axes]
    assert len(panels) == 2 and "(L2_regularization_model (run 2))" in panels[1]
    sweep = figure_of(drawn, "task3_sweep.png").axes  # a row per folder, a panel per setting
    assert [axes.get_xlabel() for axes in sweep] == ["learning rate (log scale)"] * 2  # varied
    legend = [label.get_text() for label in
              figure_of(drawn, "task4_accuracy_vs_time.png").axes[0].get_legend().get_texts()]
    for folder, model in (("Resnet", "ResNet-18"), ("Resnet-run2", "ResNet-18"),
                          ("L2_regularization_model (run 2)", "LeNet")):
        # the best config of each folder: (run 2) holds config_2 only
        assert len([label for label in legend if label.startswith(f"{model} {folder}: ")]) == 1
    assert any(label.startswith("LeNet L2_regularization_model (run 2): config_2")
               for label in legend)
    colours = {line.get_label().split(":")[0]: line.get_color()
               for line in figure_of(drawn, "task4_accuracy_vs_time.png").axes[0].lines}
    assert colours["ResNet-18 Resnet"] == colours["ResNet-18 Resnet-run2"]  # by script
    assert colours["ResNet-18 Resnet"] != colours["LeNet L2_regularization_model"]

    links = [unquote(link) for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]
    confusions = [link for link in links if link.startswith("figures/confusion_")]
    assert len(confusions) == len(set(confusions)) == 6  # one per folder, none overwritten
    for link in links:
        assert (root / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link


def test_an_unwritable_modelset_is_one_error_line_and_status_1(modelset, tmp_path, monkeypatch,
                                                               capsys):
    root = copy_of(modelset, tmp_path)

    def refuse(path, write):  # what a read-only folder does for a normal user (not for root)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(report, "write_atomically", refuse)
    assert make_report.main(["--modelset", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the report into {root}/") and err.count("\n") == 1
    assert "permissions" in err and "--modelset" in err
    assert not (root / "REPORT.md").exists()


def test_a_sweep_whose_every_config_diverged_is_reported_without_warnings(modelset, tmp_path,
                                                                          capsys, recwarn):
    root = copy_of(modelset, tmp_path)
    shutil.rmtree(root / "L2_regularization_model")
    rewrite(lambda results: results.update(configs=results["configs"][1:]))(
        root / "original_version_model_multiGPU" / "training_result.json")
    assert make_report.main(["--modelset", str(root)]) == 0
    assert capsys.readouterr().err == ""
    noise = [str(warning.message) for warning in recwarn
             if issubclass(warning.category, (UserWarning, RuntimeWarning))]
    assert noise == []
    diverged = [line for line in (root / "REPORT.md").read_text().splitlines()
                if line.startswith("| config_2 |")]
    assert len(diverged) == 1 and "**DIVERGED**" in diverged[0]


def test_a_config_still_running_in_its_test_pass_is_drawn_without_warnings(modelset, tmp_path,
                                                                           recwarn):
    root = copy_of(modelset, tmp_path)

    def in_its_test_pass(results):  # every seed of config_1: its last epoch not yet tested
        for entry in results["configs"][:2]:
            entry.update(status="running")
            entry["history"][-1]["test_accuracy"] = None
    rewrite(in_its_test_pass)(root / "L2_regularization_model" / "training_result.json")
    assert make_report.main(["--modelset", str(root)]) == 0
    assert [str(warning.message) for warning in recwarn
            if issubclass(warning.category, RuntimeWarning)] == []


def record_pngs(monkeypatch, module):
    """[figure] for every PNG that ``module`` (plots, via outputs or report) renders."""
    drawn = []
    render = module.png_bytes

    def recording(figure):
        drawn.append(figure)
        return render(figure)

    monkeypatch.setattr(module, "png_bytes", recording)
    return drawn


@pytest.mark.usefixtures("rendered")
def test_the_gap_is_measured_with_the_eval_mode_train_accuracy(modelset, tmp_path, monkeypatch):
    root = copy_of(modelset, tmp_path)

    def set_eval(results):  # an eval-mode train accuracy well apart from the running one
        for entry in results["configs"]:
            for record in entry["history"]:
                record["train_accuracy_eval"] = record["train_accuracy"] + 11.0
    rewrite(set_eval)(root / "L2_regularization_model" / "training_result.json")
    results = json.loads((root / "L2_regularization_model" / "training_result.json").read_text())
    drawn = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(root)]) == 0
    text = (root / "REPORT.md").read_text()

    (l2,) = [entry for entry in results["configs"] if entry["id"] == "config_2"]
    expected = l2["history"][-1]["train_accuracy_eval"] - l2["final_test_accuracy"]
    (row,) = [line for line in text.splitlines() if line.startswith("| config_2 (l2) |")]
    assert f"| {expected:.2f} |" in row  # the summary table's gap column
    (gap_row,) = [line for line in text.splitlines()
                  if line.startswith("| L2_regularization.py |") and "config_2 l2" in line]
    assert gap_row.split(" | ")[3] == f"{expected:.2f}"
    curves = {line.get_label(): line.get_ydata()
              for line in figure_of(drawn, "task2_gap.png").axes[0].lines}
    (l2_curve,) = [y for label, y in curves.items() if label.startswith("config_2 (l2)")]
    assert l2_curve == pytest.approx([record["train_accuracy_eval"] - record["test_accuracy"]
                                      for record in l2["history"]])


def test_legends_name_each_config_with_only_the_settings_that_differ(modelset, tmp_path,
                                                                      monkeypatch):
    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    drawn = record_pngs(monkeypatch, plots)
    plots.draw_views(tmp_path, results)
    assert len(drawn) == 3
    for figure in drawn:
        legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        curves = [label for label in legend if label.startswith("config_")]
        assert curves == ["config_1 (control): weight_decay=0.0 (mean of 2 seeds)",
                          "config_1: ±1 std over 2 seeds",
                          "config_2 (l2): weight_decay=0.001"]
        title = figure.axes[0].get_title()
        assert "2,000" not in title and f"{results['data']['train_images']:,} training" in title


@pytest.mark.usefixtures("rendered")
def test_epoch_axes_have_whole_number_ticks_only(modelset, tmp_path, monkeypatch):
    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    one_epoch = [dict(entry, history=entry["history"][:1]) for entry in results["configs"]]
    drawn = record_pngs(monkeypatch, plots)
    for entries in (results["configs"], one_epoch):
        plots.draw_views(tmp_path, dict(results, configs=entries))
    figures = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(modelset)]) == 0
    drawn = drawn[:6] + [figure_of(figures, "task2_gap.png")]  # and the report's Task 2 one
    epoch_axes = [axes for figure in drawn for axes in figure.axes
                  if axes.get_xlabel() == "epoch"]
    assert len(epoch_axes) == 7
    for axes in epoch_axes:
        figure = axes.figure
        figure.canvas.draw()
        low, high = axes.get_xlim()
        ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks


def test_report_sections_follow_the_tasks_in_order(modelset, tmp_path):
    root = copy_of(modelset, tmp_path)
    for folder, script in (("Resnet", "Resnet_model.py"),  # cheap stand-ins: LeNet results
                           ("Baseline", "Original_version_model.py")):
        shutil.copytree(root / "L2_regularization_model", root / folder)
        rewrite(lambda results: results.update(script=script))(
            root / folder / "training_result.json")
    assert make_report.main(["--modelset", str(root)]) == 0
    text = (root / "REPORT.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")][1:]
    scripts = {"Task 1": "Original_version_model.py", "Task 2": "L2_regularization.py",
               "Task 3": "Original_version_model_multiGPU.py", "Task 4": "Resnet_model.py"}

    def task(heading):
        for number, (name, script) in enumerate(scripts.items(), start=1):
            if name in heading or f"`{script}`" in heading:
                return number
        return 5  # "Not run yet" comes last
    order = [task(heading) for heading in headings]
    assert order == sorted(order) and set(order) == {1, 2, 3, 4, 5}, headings
    ends = [text.index(f"## Task {number}") for number in range(1, 5)]
    ends.append(text.index("## Not run yet"))
    for start, end in zip(ends, ends[1:]):  # each task sets our runs beside the report
        assert text[start:end].count("**Our runs against the report:**") == 1


def test_task1_sets_the_baseline_beside_the_report_not_the_best_config(modelset, tmp_path):
    """The config that quotes the report's 60% is the baseline, though another did better."""
    root = copy_of(modelset, tmp_path)
    shutil.copytree(root / "L2_regularization_model", root / "Baseline")

    def as_task1(results):
        results["script"] = "Original_version_model.py"
        for entry in results["configs"]:
            baseline = entry["id"] == "config_1"
            entry["final_test_accuracy"] = 11.5 if baseline else 24.5
            if baseline:
                entry["config"]["reported_accuracy"] = 60.0
    rewrite(as_task1)(root / "Baseline" / "training_result.json")
    assert make_report.main(["--modelset", str(root)]) == 0
    task1 = (root / "REPORT.md").read_text().split("## Task 2")[0]
    assert "in `Baseline` the baseline reached 11.5% test accuracy" in task1
    assert "the report: 60% (all 50,000 training images)" in task1


def test_a_config_edited_by_hand_in_the_results_json_is_shown_as_its_run_trained_it(
        modelset, tmp_path, capsys):
    root = copy_of(modelset, tmp_path)
    path = root / "L2_regularization_model" / "training_result.json"
    results = json.loads(path.read_text())
    for entry in results["configs"]:
        entry["config"]["lr"] = 0.05 if entry["id"] == "config_1" else entry["config"]["lr"]
        if entry["id"] == "config_2":  # a key at its neutral value, as CONFIGS may gain one
            entry["config"]["nesterov"] = False
    path.write_text(json.dumps(results))  # weights_file kept: make_report rebuilds the views
    assert make_report.main(["--modelset", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "config_1: its config in training_result.json is not the one its run" in printed
    assert "config_2: its config" not in printed
    shown = json.loads(path.read_text())["configs"]
    assert {entry["config"]["lr"] for entry in shown} == {0.01}
    assert [entry["config"]["name"] for entry in shown] == ["control", "control", "l2"]
    assert "lr=0.05" not in (root / "REPORT.md").read_text()


def test_not_run_yet_commands_work_offline_and_keep_the_earlier_results(modelset, tmp_path,
                                                                        capsys):
    root = copy_of(modelset, tmp_path)
    sweep = importlib.import_module("Original_version_model_multiGPU")
    third = {"num_epochs": 2, "lr": 0.005, "momentum": 0.9, "batch_size": 32}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "CONFIGS", SWEEP_CONFIGS + [third])
        # make_report reads the scripts' CONFIGS as text: here, as if the file held these
        scripts = make_report.read_scripts()
        scripts["Original_version_model_multiGPU.py"].configs = sweep.CONFIGS
        patch.setattr(make_report, "read_scripts", lambda: scripts)
        assert make_report.main(["--modelset", str(root)]) == 0
        missing = (root / "REPORT.md").read_text().split("## Not run yet")[1]
        assert "docs/data.md" in missing and "Data: downloaded, local, or offline" in missing
        for script in ("Original_version_model.py", "Dropout_regularization.py",
                       "Resnet_model.py"):
            assert f"`python {script} --data-dir DIR --out {root}/" in missing
        (command,) = [match for match in re.findall(r"`([^`]+)`", missing)
                      if match.startswith("python Original_version_model_multiGPU.py")]
        words = command.split()
        assert words[-2:] == ["--configs", "3"]
        capsys.readouterr()
        assert sweep.main(words[2:]) == 0  # as a user would paste it, offline
    assert "earlier results are kept" not in capsys.readouterr().out
    folder = root / "original_version_model_multiGPU"
    results = json.loads((folder / "training_result.json").read_text())
    assert [entry["id"] for entry in results["configs"]] == ["config_1", "config_2", "config_3"]
    assert not list(folder.glob("earlier-*"))


def test_a_table_mixing_subsets_carries_a_warning(modelset, tmp_path):
    root = copy_of(modelset, tmp_path)
    shutil.copytree(root / "L2_regularization_model", root / "Dropout_regularization")
    dropout = root / "Dropout_regularization" / "training_result.json"
    rewrite(lambda results: results.update(script="Dropout_regularization.py"))(dropout)
    assert make_report.main(["--modelset", str(root)]) == 0
    task2 = (root / "REPORT.md").read_text().split("## Task 2: regularisation")[1]
    assert "different numbers of images" not in task2.split("## Task 3")[0]

    rewrite(lambda results: results["data"].update(train_images=4000))(dropout)
    assert make_report.main(["--modelset", str(root)]) == 0
    task2 = (root / "REPORT.md").read_text().split("## Task 2: regularisation")[1]
    (warning,) = [line for line in task2.split("## Task 3")[0].splitlines()
                  if "Warning" in line]
    assert "different numbers of images" in warning and "4,000 training" in warning


@pytest.mark.parametrize("case", ["notes", "project"])
def test_the_report_never_overwrites_what_it_did_not_write(case, tmp_path, capsys):
    modelset = tmp_path / "modelset"
    modelset.mkdir()
    if case == "notes":
        (modelset / "REPORT.md").write_text("# my own notes\n")
    else:
        (modelset / "train.py").write_text("print('mine')\n")
    before = {path.name: path.read_bytes() for path in modelset.iterdir()}
    assert make_report.main(["--modelset", str(modelset)]) == 2
    assert ("was not written by make_report.py" if case == "notes"
            else "it looks like a project") in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in modelset.iterdir()} == before






def sweep_copy(modelset, tmp_path, reported=True):
    root = copy_of(modelset, tmp_path)
    shutil.rmtree(root / "L2_regularization_model")
    rewrite(lambda results: hand_made_sweep(results, reported))(
        root / "original_version_model_multiGPU" / "training_result.json")
    return root


def time_paragraph(text):
    (paragraph,) = [line for line in text.splitlines()
                    if line.startswith("**Time to the report's best LeNet")]
    return paragraph


def marked_points(axes):
    """[(x, y)] of the dots where a line first reaches the report's best LeNet."""
    return [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in axes.lines
            if line.get_linestyle() == "None" and len(line.get_xdata()) == 1]


@pytest.mark.usefixtures("rendered")
def test_task3_time_figure_shows_when_each_config_first_reaches_the_reports_best_lenet(
        modelset, tmp_path, monkeypatch):
    root = sweep_copy(modelset, tmp_path)
    drawn = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(root)]) == 0
    text = (root / "REPORT.md").read_text()

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text.split("## Task 3: learning rate")[1])
    assert f"figures/{TIME_FIGURE}" in links
    assert (root / "figures" / TIME_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    said = time_paragraph(text)
    assert said.startswith("**Time to the report's best LeNet, 65.75% (its config_3")
    speedrun = "config_12 (speedrun) first reaches it after 4.0 s of training (epoch 2 of 3)"
    best = ("config_3 (the report's best config) first reaches it after 44 s of training "
            "(epoch 4 of 4)")
    assert speedrun in said and best in said and said.index(speedrun) < said.index(best)
    assert "2 of 3 finished configs reach it" in said and "config_2" not in said

    axes = figure_of(drawn, TIME_FIGURE).axes[0]
    assert [line.get_ydata()[0] for line in axes.lines if line.get_linestyle() == ":"
            and len(set(line.get_ydata())) == 1] == [65.75]  # the report's best, level
    assert sorted(marked_points(axes)) == [(4.0, 66.0), (44.0, 70.5)]
    legend = [label.get_text() for label in axes.get_legend().get_texts()]
    curves = [label for label in legend if label.startswith("config_") and "std" not in label]
    assert curves == ["config_1: num_epochs=3, lr=0.02",
                      "config_3: num_epochs=4, lr=0.001 (mean of 2 seeds)",
                      "config_12 (speedrun): num_epochs=3, lr=0.1"]  # config_2 is unfinished
    assert "config_3: ±1 std over 2 seeds" in legend
    assert any(label.startswith("the report's best LeNet: 65.75%") for label in legend)


@pytest.mark.usefixtures("rendered")
def test_task3_time_figure_without_a_reported_accuracy_has_no_line_and_no_sentence(
        modelset, tmp_path, monkeypatch):
    root = sweep_copy(modelset, tmp_path, reported=False)
    scripts = make_report.read_scripts()  # as if no script's CONFIGS quoted the report either
    for text in scripts.values():
        text.configs = [{key: value for key, value in config.items()
                         if key != "reported_accuracy"} for config in text.configs]
    monkeypatch.setattr(make_report, "read_scripts", lambda: scripts)
    drawn = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(root)]) == 0
    text = (root / "REPORT.md").read_text()
    assert f"figures/{TIME_FIGURE}" in text
    assert "Time to the report's best LeNet" not in text
    axes = figure_of(drawn, TIME_FIGURE).axes[0]
    assert len([line for line in axes.lines if line.get_label().startswith("config_")]) == 3
    assert marked_points(axes) == []
    assert not any(line.get_linestyle() == ":" and len(set(line.get_ydata())) == 1
                   for line in axes.lines)


@pytest.mark.usefixtures("rendered")
def test_task3_time_figure_with_several_folders_and_one_with_nothing_finished(
        modelset, tmp_path, monkeypatch, recwarn):
    root = sweep_copy(modelset, tmp_path)
    sweep = root / "original_version_model_multiGPU"
    shutil.copytree(sweep, root / "sweep-small")
    rewrite(lambda results: results["data"].update(train_images=400))(
        root / "sweep-small" / "training_result.json")
    shutil.copytree(sweep, root / "sweep-unfinished")

    def unfinish(results):
        for entry in results["configs"]:
            entry["status"] = "running"
    rewrite(unfinish)(root / "sweep-unfinished" / "training_result.json")
    drawn = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(root)]) == 0
    said = time_paragraph((root / "REPORT.md").read_text())
    assert said.count("config_12 (speedrun) first reaches it after 4.0 s") == 2
    assert "In `original_version_model_multiGPU` (" in said and "In `sweep-small` (400 " in said
    assert "sweep-unfinished" not in said
    axes = figure_of(drawn, TIME_FIGURE).axes[0]
    labels = [line.get_label() for line in axes.lines if "config_" in line.get_label()]
    for folder in ("original_version_model_multiGPU", "sweep-small"):
        assert len([label for label in labels if label.startswith(f"{folder}: config_")]) == 3
    assert not any(label.startswith("sweep-unfinished") for label in labels)
    assert any(label.endswith("[400 images] (mean of 2 seeds)") for label in labels)
    assert any(plots.MIXED_NOTE in text.get_text() for text in axes.texts)

    # Nothing finished anywhere: no figure, no sentence, no crash, no warnings.
    shutil.rmtree(sweep)
    shutil.rmtree(root / "sweep-small")
    shutil.rmtree(root / "figures")
    assert make_report.main(["--modelset", str(root)]) == 0
    text = (root / "REPORT.md").read_text()
    assert TIME_FIGURE not in text and "Time to the report's best LeNet" not in text
    assert not (root / "figures" / TIME_FIGURE).exists()
    assert "## Task 3: learning rate" in text
    assert [str(warning.message) for warning in recwarn
            if issubclass(warning.category, (UserWarning, RuntimeWarning))] == []


@pytest.mark.usefixtures("rendered")
def test_task4_names_our_best_lenet_and_marks_the_reports_a100_figure(modelset, tmp_path,
                                                                      monkeypatch):
    """The Task 4 sentence sets the report's ResNet-18 beside the best LeNet *we ran* (by its
    id and accuracy, however far below the report's it is) and beside the report's best LeNet,
    65.75% (config_3 of Task 3's CONFIGS, as README says), however little of it we ran; the
    report's A100 point is marked as other hardware."""
    root = copy_of(modelset, tmp_path)
    shutil.copytree(root / "L2_regularization_model", root / "Resnet")

    def as_resnet(results):
        results.update(script="Resnet_model.py")
        for entry in results["configs"]:
            entry["config"].update(reported_accuracy=89.56, reported_seconds=306.0)

    rewrite(as_resnet)(root / "Resnet" / "training_result.json")
    rewrite(lambda results: [entry["config"].update(reported_accuracy=60.0)
                             for entry in results["configs"]])(
        root / "L2_regularization_model" / "training_result.json")
    drawn = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(root)]) == 0
    text = (root / "REPORT.md").read_text()
    section = text[text.index("## Task 4"):]
    lenet = json.loads((root / "L2_regularization_model" / "training_result.json").read_text())
    best = max((entry for entry in lenet["configs"] if entry["status"] == "finished"),
               key=lambda entry: entry["final_test_accuracy"])
    assert f"LeNet's best here is {best['id']} of `L2_regularization_model`" in section
    assert "for the best LeNet config we ran" not in section
    assert ("89.56% in 306 s on one A100, against 65.75% (config_3 of "
            "Original_version_model_multiGPU.py, 200 epochs) for its best LeNet.") in section
    assert "60%" not in section  # the LeNet configs run here quote 60%: not the report's best
    legend = [" ".join(label.get_text().split()) for label in  # unwrapped
              figure_of(drawn, "task4_accuracy_vs_time.png").axes[0].get_legend().get_texts()]
    assert any("on one A100" in label and "not comparable" in label for label in legend)


def test_one_scripts_output_folder_as_modelset_is_refused_naming_the_folder_above(
        modelset, capsys):
    folder = next(path for path in sorted(modelset.iterdir())
                  if path.is_dir() and list(path.glob("*.json")))
    assert make_report.main(["--modelset", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "it is one script's output folder" in error
    assert f"--modelset {modelset.resolve()}" in error
    assert not (folder / "REPORT.md").exists()


def test_ctrl_c_during_make_report_is_one_line_not_a_traceback(modelset, tmp_path,
                                                              monkeypatch, capsys):
    root = copy_of(modelset, tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    assert make_report.main(["--modelset", str(root)]) == 130
    assert capsys.readouterr().err.startswith("\nStopped by Ctrl-C; REPORT.md and figures/ "
                                              "are whole, as they were")


@pytest.mark.parametrize("case", ["a file of yours in figures", "figures is a file",
                                  "figures is a link", "the run store", "a run's folder"])
def test_what_make_report_would_remove_or_write_into_the_wrong_place_is_refused(
        case, modelset, tmp_path, capsys):
    """figures/ is written anew with each report: a file in it that the kit did not draw is
    named, not deleted; figures/ as a file or a link, and --modelset inside a run store, are
    refused in one line (exit 2), nothing written."""
    root = copy_of(modelset, tmp_path)
    target = root
    if case == "a file of yours in figures":
        (root / "figures").mkdir()
        (root / "figures" / "my_notes.txt").write_text("mine")
    elif case == "figures is a file":
        (root / "figures").write_text("mine")
    elif case == "figures is a link":
        (tmp_path / "elsewhere").mkdir()
        (root / "figures").symlink_to(tmp_path / "elsewhere")
    else:
        target = root / "L2_regularization_model" / "runs"
        target = target if case == "the run store" else next(target.iterdir())
    before = sorted(path.relative_to(root) for path in root.rglob("*"))
    assert make_report.main(["--modelset", str(target)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert {"a file of yours in figures": "my_notes.txt was not drawn by make_report.py",
            "figures is a file": "figures is not a folder",
            "figures is a link": "figures is a link",
            "the run store": "inside an output folder's run store",
            "a run's folder": "inside an output folder's run store"}[case] in error
    assert sorted(path.relative_to(root) for path in root.rglob("*")) == before


def test_a_report_that_cannot_replace_report_md_puts_the_earlier_figures_back(
        modelset, tmp_path, monkeypatch, capsys):
    """The last of the three renames fails (REPORT.md made immutable, say): the earlier
    figures go back beside the earlier REPORT.md, whose every link still works."""
    root = copy_of(modelset, tmp_path)
    assert make_report.main(["--modelset", str(root)]) == 0
    earlier = root / "figures" / "task2_gap.png"  # not what this report will draw again
    shutil.copy(root / "L2_regularization_model" / "loss.png", earlier)
    before = snapshot(root)
    replace = os.replace

    def refused(source, target, *args, **kwargs):
        if Path(target) == root / "REPORT.md":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(target))
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refused)
    assert make_report.main(["--modelset", str(root)]) == 1
    assert "Operation not permitted" in capsys.readouterr().err
    assert snapshot(root) == before


def snapshot(root):
    """{path: bytes} of REPORT.md and every file under figures/, and the hidden names left."""
    files = {path.relative_to(root).as_posix(): path.read_bytes()
             for path in [root / "REPORT.md", *sorted((root / "figures").iterdir())]}
    return files, sorted(path.name for path in root.glob(".*"))


@pytest.mark.usefixtures("rendered")
def test_a_report_stopped_while_drawing_leaves_the_earlier_report_and_figures_whole(
        modelset, tmp_path, monkeypatch, capsys):
    """SIGTERM between two figures: REPORT.md and figures/ stay the earlier report's, byte for
    byte, nothing half-written beside them; a stop while they are swapped in waits for the
    swap; what a kill -9 left is cleared by the next run."""
    root = copy_of(modelset, tmp_path)
    (root / "figures").mkdir()  # a figure an earlier report drew, of a folder now gone
    shutil.copy(root / "L2_regularization_model" / "loss.png",
                root / "figures" / "from_a_report_before.png")
    assert make_report.main(["--modelset", str(root)]) == 0
    before = snapshot(root)
    assert "figures/from_a_report_before.png" not in before[0]  # figures/ is this report's
    assert before[1] == []
    saved = []
    savefig = Figure.savefig

    def stopped_at_the_second(figure, *args, **kwargs):
        saved.append(figure)
        if len(saved) == 2:
            signal.raise_signal(signal.SIGTERM)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", stopped_at_the_second)
    assert make_report.main(["--modelset", str(root)]) == 143
    assert len(saved) == 2 and snapshot(root) == before
    monkeypatch.setattr(Figure, "savefig", savefig)
    replace = os.replace

    def stopped_in_the_swap(source, target, *args, **kwargs):
        if Path(target) == root / "REPORT.md":
            signal.raise_signal(signal.SIGTERM)  # waits until the swap is done
        return replace(source, target, *args, **kwargs)

    (root / "REPORT.md").write_text((root / "REPORT.md").read_text() + "an edit\n")
    (root / ".report-0badf00d" / "figures").mkdir(parents=True)  # as a kill -9 leaves them
    (root / ".figures-old-.report-0badf00d").mkdir()
    monkeypatch.setattr(os, "replace", stopped_in_the_swap)
    assert make_report.main(["--modelset", str(root)]) == 143
    assert "an edit" not in (root / "REPORT.md").read_text()  # the new one, whole
    assert snapshot(root)[1] == [] and sorted(snapshot(root)[0]) == sorted(before[0])


def test_make_report_runs_where_torch_cannot_be_imported(modelset, tmp_path):
    """The report only reads JSON and draws: it runs on a machine without torch (here made
    unimportable), from another folder, and writes the same sections."""
    root = copy_of(modelset, tmp_path)
    code = ("import runpy, sys; sys.modules['torch'] = None; "  # any import of torch fails
            "script, folder = sys.argv[1:]; sys.argv = [script, '--modelset', folder]; "
            "sys.path[0] = script.rsplit('/', 1)[0]; "  # as python path/to/make_report.py
            "runpy.run_path(script, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "make_report.py"),
                             str(root)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = (root / "REPORT.md").read_text()
    assert "## Task 2: LeNet + L2" in text and "## Task 3" in text


READER = """
import json, sys
sys.modules["torch"] = sys.modules["matplotlib"] = None  # any import of either fails
from pathlib import Path
from cifarkit import results
loaded = sorted(name for name in sys.modules if name.startswith("cifarkit."))
good, bad = map(Path, sys.argv[1:])
import make_report
from cifarkit import report
runs, skipped = report.load_runs(good.parent.parent, make_report.read_scripts())
print(json.dumps({"loaded": loaded, "good": results.read_results(good)[1],
                  "bad": results.read_results(bad)[1], "runs": [str(run.path) for run in runs],
                  "skipped": [[str(path), why] for path, why in skipped]}))
"""


def test_results_are_read_and_checked_where_neither_torch_nor_matplotlib_imports(
        modelset, tmp_path):
    """cifarkit.results, the one reader of the results JSON, imports nothing that trains or
    draws; it and make_report's reading path (the scripts' tasks, then each results JSON
    through results) work where neither torch nor matplotlib can be imported."""
    root = copy_of(modelset, tmp_path)
    good = root / "L2_regularization_model" / "training_result.json"
    bad = root / "original_version_model_multiGPU" / "training_result.json"
    rewrite(lambda results: results["configs"][0].pop("status"))(bad)
    result = subprocess.run([sys.executable, "-c", READER, str(good), str(bad)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    said = json.loads(result.stdout)
    assert said["loaded"] == ["cifarkit.results"]  # not plots, store or anything with torch
    assert said["good"] is None
    assert said["bad"] == "configs entry 1: 'status' is missing or not a string"
    assert said["runs"] == [str(good)] and said["skipped"] == [[str(bad), said["bad"]]]


def test_predict_reads_the_results_json_through_the_one_schema(modelset, tmp_path):
    """predict.py finds what made a weights file through cifarkit.results: a results JSON
    the schema refuses names nothing, however the file looks to a plain json.load."""
    import predict
    from cifarkit.errors import UserError

    folder = copy_of(modelset, tmp_path) / "L2_regularization_model"
    results_file = folder / "training_result.json"
    assert predict.trained_with(folder / "config_2.pth")[0]["config"]["name"] == "l2"
    rewrite(lambda results: results["configs"][2]["config"].update(lr=True))(results_file)
    assert results.read_results(results_file)[1] == (
        "configs entry 3: its config: 'lr' is missing or not a number")
    with pytest.raises(UserError, match="no results JSON beside it names this file"):
        predict.trained_with(folder / "config_2.pth")


def test_no_one_but_cifarkit_results_parses_a_results_json():
    """make_report.py, predict.py and the report read results only through cifarkit.results."""
    for path in (REPO / "make_report.py", REPO / "predict.py", REPO / "cifarkit" / "report.py"):
        calls = [node.attr for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Attribute) and node.attr in ("load", "loads")
                 and getattr(node.value, "id", None) == "json"]
        assert calls == [], path.name


def drawn_extent(figure, artist):
    figure.canvas.draw()
    return artist.get_window_extent(figure.canvas.get_renderer())


def test_the_training_accuracy_y_label_stays_beside_its_axes():
    entry = {"id": "config_1", "seed": 0, "config": {"lr": 0.01}, "history": [
        {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 40.0 + epoch,
         "test_accuracy": 40.0, "train_accuracy_eval": 41.0 + epoch} for epoch in (1, 2, 3)]}
    figure = plots.history_figure([entry], "train_accuracy_eval", "t", "y", 5.0, sample=5000)
    axes = figure.axes[0]
    assert "5,000" in axes.get_ylabel()
    label, box = drawn_extent(figure, axes.yaxis.label), drawn_extent(figure, axes)
    assert box.y0 - 1 <= label.y0 and label.y1 <= box.y1 + 1  # not off the top


@pytest.mark.usefixtures("rendered")
def test_a_dollar_sign_in_a_name_or_path_is_drawn_as_text_not_read_as_tex(modelset, tmp_path,
                                                                          monkeypatch):
    """matplotlib reads $...$ as TeX and fails on "x$_{$y": a config's name, a data path and a
    folder name are the user's text, drawn as written."""
    root = copy_of(modelset, tmp_path)
    shutil.rmtree(root / "original_version_model_multiGPU")
    folder = (root / "L2_regularization_model").rename(root / "L2_$5_and_$6")

    def dollars(results):
        results["data"]["source"] = "/data/cifar_$1_$2"
        for entry in results["configs"]:
            entry["config"]["name"] = "x$_{$y"
    rewrite(dollars)(folder / "training_result.json")
    drawn = record_figures(monkeypatch)
    assert make_report.main(["--modelset", str(root)]) == 0
    texts = {text.get_text() for figure in drawn for text in figure.findobj(
        matplotlib.text.Text)}
    assert any("x$_{$y" in text for text in texts) and any("$1_$2" in text for text in texts)


@pytest.mark.usefixtures("rendered")
def test_examples_png_is_as_wide_as_its_grid_whatever_the_configs_label(tmp_path):
    """The speedrun's label (eleven settings) is wrapped, not a title wider than the grid."""
    speedrun = {"name": "speedrun", "num_epochs": 5, "lr": 0.1, "momentum": 0.9,
                "nesterov": True, "batch_size": 128, "weight_decay": 5e-4, "augment": "flip",
                "schedule": "onecycle", "label_smoothing": 0.1, "tta": True}
    title = (f"Original_version_model_multiGPU, "
             f"{results.config_label({'id': 'config_12', 'config': speedrun})}\n"
             "21 of these 32 right; 68.1% of all 10,000 test images")
    images = np.zeros((32, 3, 32, 32), dtype=np.uint8)
    figure = plots.examples_figure(images, [0] * 32, [1] * 32, results.CLASSES, title)
    grid = drawn_extent(figure, figure.axes[0].images[0])
    grid_width, grid_height = (side * 110 / figure.dpi for side in (grid.width, grid.height))
    path = plots.save(figure, tmp_path / "examples.png")  # at 110 dpi
    width, height = Image.open(path).size
    assert width < 1300 and grid_width > 0.9 * width, (width, grid_width)
    assert height < grid_height + 120  # the title's four lines above it, no wide band


@pytest.mark.parametrize("backend", ["module://matplotlib_inline.backend_inline", "nosuch"])
def test_figures_are_drawn_with_agg_whatever_mplbackend_says(tmp_path, backend):
    """Jupyter hands `!python` its inline backend (without matplotlib_inline installed here):
    the kit only writes files, so it draws with Agg and leaves MPLBACKEND as it found it."""
    code = ("import os, sys; from cifarkit import plots; import numpy as np; "
            "plots.save(plots.confusion_figure(np.eye(10), [str(i) for i in range(10)], 't'), "
            "__import__('pathlib').Path(sys.argv[1])); print(os.environ['MPLBACKEND'])")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MPLBACKEND": backend})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == backend
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
