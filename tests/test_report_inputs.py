"""make_report.py on hand-edited or odd results JSONs: each run ends with REPORT.md written and
the bad file or field named in a warning, never a traceback and never a hang. The results are
built by hand (test_report's hand-made sweep), so nothing trains here."""
import contextlib
import copy
import dataclasses
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

import make_report
from cifarkit.results import CLASSES
from conftest import REPO, hand_made_sweep, rewrite

SWEEP = "Original_version_model_multiGPU.py"
RESNET = "Resnet_model.py"
RECORD = {"epoch": 1, "seconds": 1.0, "train_loss": 1.5, "train_accuracy": 40.0,
          "train_accuracy_eval": 42.0, "test_accuracy": 40.0}
TEMPLATE = {  # one finished entry: hand_made_sweep builds the configs list from it
    "id": "config_1", "seed": 0, "status": "finished", "history": [RECORD], "precision": "fp32",
    "run": "runs/config_1-s0",  # as the kit writes it: make_report then takes in no old folder
    "config": {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32},
    "final_test_accuracy": 40.0, "final_train_accuracy": 40.0, "best_test_accuracy": 40.0,
    "train_seconds": 1.0, "confusion_matrix": [[10] * len(CLASSES)] * len(CLASSES),
    "per_class_accuracy": {name: 40.0 for name in CLASSES}}
RESULTS = {"script": SWEEP, "command": f"python {SWEEP} --epochs 1", "devices": ["cpu"],
           "started": "2026-12-06T04:42:53+00:00",
           "world_size": 1, "seed": 0, "configs": [TEMPLATE],
           "data": {"source": "generated", "train_images": 300, "test_images": 100}}


READ_SCRIPTS = make_report.read_scripts  # the scripts as they are, for the quick looks


@pytest.fixture(autouse=True)
def twelve_configs_defined(monkeypatch):
    """Each script's CONFIGS taken to hold 12 configs, whatever the scripts hold now: the
    hand-made sweep has 1, 2, 3 and 12, so "Not run yet" proposes a rerun command."""
    scripts = {script: dataclasses.replace(text, configs=[{}] * 12)
               for script, text in READ_SCRIPTS().items()}
    monkeypatch.setattr(make_report, "read_scripts", lambda: scripts)


def results_file(root, folder, script=SWEEP):
    """root/folder/training_result.json holding a valid hand-made sweep of ``script``."""
    results = dict(copy.deepcopy(RESULTS), script=script)
    hand_made_sweep(results)
    path = root / folder / "training_result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))
    return path


def report_of(root, capsys):
    """(exit status, REPORT.md's text, what was printed to stderr) of make_report on root."""
    status = make_report.main(["--modelset", str(root)])
    report = root / "REPORT.md"
    return status, report.read_text() if report.exists() else "", capsys.readouterr().err


@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of waiting for ever (a read blocked on a named pipe, say)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_skipped(root, bad, status, text, err, why):
    """The report was written without ``bad``, which is named with ``why`` on stderr and in
    REPORT.md, and the good folder has its section."""
    assert status == 0, err
    assert f"warning: {bad}: {why}; skipped." in err
    assert f"- `{bad.relative_to(root)}`: {why}." in text
    assert "), `good`\n" in text


def _as_written(change):
    """A damage as rewrite's, its "weights_file" kept: make_report rebuilds the file's views."""
    def damage(path):
        results = json.loads(path.read_text())
        change(results)
        path.write_text(json.dumps(results))
    return damage


def _in_entry(number, **change):
    """A damage: ``change`` in the config of configs entry ``number`` (from 1)."""
    return rewrite(lambda results: results["configs"][number - 1]["config"].update(change))


def skipped_when_damaged(tmp_path, capsys, damage, why):
    """A good folder beside one whose results ``damage`` spoils: the report skips the
    spoiled one, saying ``why``, and still reports the good one."""
    results_file(tmp_path, "good", "Original_version_model.py")
    bad = results_file(tmp_path, "sweep")
    damage(bad)
    status, text, err = report_of(tmp_path, capsys)
    assert_skipped(tmp_path, bad, status, text, err, why)
    assert "), `sweep`\n" not in text


@pytest.mark.parametrize("damage, why", [
    (rewrite(lambda results: results.update(world_size=None)),
     "'world_size' is not a whole number"),
    (rewrite(lambda results: results.update(world_size=0)), "'world_size' is less than 1"),
    (rewrite(lambda results: results.update(command=None)), "'command' is not a string"),
    (rewrite(lambda results: results.update(seed="1")),
     "'seed' is missing or not a whole number"),
    (rewrite(lambda results: results.update(devices=None)),
     "'devices' is missing or not a list"),
    (rewrite(lambda results: results["data"].update(train_images="many")),
     "'train_images' is missing or not a whole number"),
    (rewrite(lambda results: results["configs"][0].update(precision=3)),
     "configs entry 1: 'precision' is not a string"),
    (rewrite(lambda results: results["configs"][0]["history"][0].update(
        train_accuracy_eval="x")),
     "configs entry 1: history record 1: 'train_accuracy_eval' is missing or not a number or "
     "null"),
    (rewrite(lambda results: results["configs"][0].pop("run")),  # the kit before the store
     "written by a version of the kit before the run store (training_result.json naming no "
     "runs), which this version does not read"),
    (_in_entry(1, lr=True), "configs entry 1: its config: 'lr' is missing or not a number"),
    (_in_entry(1, augment=["flip"]),
     "configs entry 1: its config: 'augment' is a list, not a single value"),
    (rewrite(lambda results: results["configs"][0].update(history=[])),
     "configs entry 1: finished, but its 'history' holds no epoch"),
    (rewrite(lambda results: results.update(script=[SWEEP])),
     "'script' is missing or not a string"),
    (rewrite(lambda results: results["configs"][0]["history"][0].update(train_loss="x")),
     "configs entry 1: history record 1: 'train_loss' is missing or not a number"),
    (rewrite(lambda results: results["configs"][0].update(batch_losses=[{"epoch": 1}])),
     "configs entry 1: 'batch_losses' is not a list of {epoch, batch, loss} with "
     "'steps_per_epoch'"),
    (_as_written(lambda results: results.update(weights_file="../../escaped_{number}.pth")),
     "'weights_file' is '../../escaped_{number}.pth', not a name like config_{number}.pth"),
], ids=["world_size-null", "world_size-0", "command-null", "seed-a-string", "devices-null",
        "train_images-a-string", "precision-a-number", "train_accuracy_eval-a-string", "no-run",
        "lr-true", "config-value-a-list", "finished-without-history", "script-a-list",
        "train_loss-a-string", "batch_losses-without-loss", "weights_file-outside"])
def test_a_field_of_the_wrong_kind_skips_its_file_by_name(tmp_path, capsys, damage, why):
    skipped_when_damaged(tmp_path, capsys, damage, why)


@pytest.mark.parametrize("script, number, change", [  # entries: configs 1, 2, 3, 3, 12
    (SWEEP, 1, {"reported_accuracy": "60%"}),
    (RESNET, 3, {"reported_seconds": "x"}),  # config_3 is the best: Task 4 quotes its time
    (SWEEP, 5, {"name": ["speed", "run"]}),
], ids=["reported_accuracy-a-string", "reported_seconds-a-string", "name-a-list"])
def test_a_naming_field_of_the_wrong_kind_is_ignored_and_the_results_reported(
        tmp_path, capsys, script, number, change):
    path = results_file(tmp_path, "run", script)
    _in_entry(number, **change)(path)
    status, text, err = report_of(tmp_path, capsys)
    (key,) = change
    note = f"configs entry {number}: its config: '{key}' is not"
    assert status == 0, err
    assert f"warning: {path}: {note}" in err and "ignored (it only names the config" in err
    assert "## Ignored fields" in text and f"- `run/training_result.json`: {note}" in text
    assert "| config_12" in text and "Skipped results files" not in text


def test_a_resnet_config_quoting_only_the_reports_seconds_is_reported(tmp_path, capsys):
    path = results_file(tmp_path, "Resnet", RESNET)

    def seconds_only(results):
        for entry in results["configs"]:
            entry["config"].pop("reported_accuracy", None)
            entry["config"]["reported_seconds"] = 60.0
    rewrite(seconds_only)(path)
    status, text, err = report_of(tmp_path, capsys)
    assert status == 0 and err == ""
    assert "ResNet-18's best here is config_3" in text and "on one A100" not in text


def test_a_json_nested_too_deeply_to_parse_is_skipped_as_unreadable(tmp_path, capsys):
    results_file(tmp_path, "good")
    bad = tmp_path / "mine" / "nested.json"
    bad.parent.mkdir()
    bad.write_text("[" * 100000 + "]" * 100000)
    status, text, err = report_of(tmp_path, capsys)
    assert_skipped(tmp_path, bad, status, text, err,
                   "not valid JSON (nested too deeply to read)")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipes_in_a_run_folder_are_never_read(tmp_path, capsys):
    results_file(tmp_path, "good")
    pipe = tmp_path / "good" / "pipe.json"
    os.mkfifo(pipe)
    os.mkfifo(tmp_path / "good" / "examples.png")  # the report copies a real one
    with deadline(30):
        status, text, err = report_of(tmp_path, capsys)
    assert_skipped(tmp_path, pipe, status, text, err,
                   "not a regular file (a named pipe, a device or a folder)")
    assert "### Best config of" in text and "examples_" not in text


AVERAGED = (": the report would average them as one config; give one of them its own folder "
            "or config id")


def _append_copy(index, **change):
    """A damage: the configs entry at ``index`` recorded a second time, with ``change``."""
    def damage(results):
        entry = copy.deepcopy(results["configs"][index])
        results["configs"].append(dict(entry, **change))
    return rewrite(damage)


@pytest.mark.parametrize("damage, why", [
    (_append_copy(2, final_test_accuracy=10.0),
     "configs entries 3 and 6 are both config_3 seed 0: a config's result for one seed "
     "must appear once"),
    (rewrite(lambda results: results["configs"][3]["config"].update(lr=0.5, momentum=0.0)),
     "config_3 holds different configs under one id (seed 0: lr=0.001, momentum=0.9; "
     "seed 1: lr=0.5, momentum=0.0)" + AVERAGED),
    (rewrite(lambda results: results["configs"][3]["config"].pop("num_epochs")),
     "config_3 holds different configs under one id (seed 0: num_epochs=4; seed 1: "
     "num_epochs=(absent))" + AVERAGED),
    (rewrite(lambda results: [entry.update(model=f"fingerprint{entry['seed']}")
                              for entry in results["configs"]]),
     "config_3 holds different configs under one id (seeds 0 and 1 record different models)"
     + AVERAGED),
], ids=["one-seed-twice", "another-lr-under-one-id", "a-key-missing", "another-model"])
def test_two_results_for_one_config_and_seed_or_two_configs_under_one_id_skip_the_file(
        tmp_path, capsys, damage, why):
    skipped_when_damaged(tmp_path, capsys, damage, why)


def test_seeds_differing_only_in_naming_fields_are_one_config(tmp_path, capsys):
    path = results_file(tmp_path, "sweep")
    _in_entry(4, name="renamed", reported_accuracy=70.0)(path)
    status, text, err = report_of(tmp_path, capsys)
    assert status == 0 and err == ""
    (row,) = [line for line in text.splitlines() if line.startswith("| config_3 ")]
    assert row.split(" | ")[2] == "2"  # seeds: both averaged as one config


def test_one_config_id_in_two_folders_is_never_averaged_across_them(tmp_path, capsys):
    results_file(tmp_path, "sweep")
    second = results_file(tmp_path, "sweep-edited")

    def other_config(results):  # config_1 of an edited CONFIGS: another lr, another result
        entry = results["configs"][0]
        entry["config"]["lr"] = 0.5
        entry.update(final_test_accuracy=20.0, best_test_accuracy=20.0)
        entry["history"][-1]["test_accuracy"] = 20.0
    rewrite(other_config)(second)
    status, text, err = report_of(tmp_path, capsys)
    assert status == 0 and err == ""
    rows = {}
    for section in text.split("\n## ")[1:]:
        folder = section.split("\n")[0].rsplit("), `", 1)[-1].rstrip("`")
        rows[folder] = [line for line in section.splitlines() if line.startswith("| config_1 |")]
    assert rows["sweep"][0].split(" | ")[3] == "50.00"  # its own result, one seed
    assert rows["sweep-edited"][0].split(" | ")[3] == "20.00"
    assert "lr=0.02" in rows["sweep"][0] and "lr=0.5" in rows["sweep-edited"][0]


def quick_looks(root, monkeypatch):
    """root holding what README's five quick looks write (their configs as the scripts hold
    them, accuracies as README says), made by hand; the scripts read as they are."""
    monkeypatch.setattr(make_report, "read_scripts", READ_SCRIPTS)
    scripts = READ_SCRIPTS()
    looks = [("Original_version_model.py", "--subset 10000 --epochs 2", [1], 10000, [35.0, 40.1]),
             ("L2_regularization.py", "--subset 10000 --epochs 5", [1, 2], 10000,
              [20.0, 27.0, 31.0, 33.5, 35.3]),
             ("Dropout_regularization.py", "--subset 10000 --epochs 5", [1, 2], 10000,
              [18.0, 24.0, 28.0, 30.0, 30.8]),
             (SWEEP, "--configs speedrun", [12], 50000, [48.0, 56.0, 61.0, 65.0, 68.1]),
             (RESNET, "--configs best --subset 5000 --epochs 3", [4], 5000, [32.1, 37.3, 45.4])]
    for script, flags, numbers, images, accuracies in looks:
        text = scripts[script]
        entries = [dict(TEMPLATE, id=f"config_{number}", run=f"runs/config_{number}-s0",
                        config=dict(text.configs[number - 1], num_epochs=len(accuracies)),
                        history=[dict(RECORD, epoch=epoch, seconds=4.0, test_accuracy=value)
                                 for epoch, value in enumerate(accuracies, 1)],
                        final_test_accuracy=accuracies[-1], best_test_accuracy=accuracies[-1],
                        train_seconds=4.0 * len(accuracies)) for number in numbers]
        results = dict(copy.deepcopy(RESULTS), script=script, configs=entries,
                       command=f"python {script} {flags}",
                       data={"source": "generated", "train_images": images,
                             "test_images": 10000})
        folder = root / Path(text.out).name
        folder.mkdir(parents=True)
        name = "training_loss.json" if script == "Original_version_model.py" else (
            "Resnet_model_result.json" if script == RESNET else "training_result.json")
        (folder / name).write_text(json.dumps(results))
    return root


def test_the_quick_looks_report_names_the_reports_best_lenet_and_says_what_is_missing(
        tmp_path, capsys, monkeypatch):
    """README's five quick looks: Tasks 3 and 4 set our LeNet beside the report's best,
    65.75% (config_3, as README says; only config_12 and the baseline, 60%, were run), the
    lone sweep config draws no one-dot sweep, every per-class table says what it holds, and
    each command not run yet says roughly how long it takes."""
    root = quick_looks(tmp_path / "modelset", monkeypatch)
    status, text, err = report_of(root, capsys)
    assert status == 0, err
    best = "65.75% (config_3 of Original_version_model_multiGPU.py, 200 epochs)"
    task3 = text[text.index("## Task 3: learning rate"):text.index("## Task 4")]
    assert "config_12 (lr 0.1, momentum 0.9, batch 128) at 68.1%, 2.3 points above the " \
           f"report's best LeNet, {best}." in task3  # 68.1 - 65.75, to one decimal
    assert "No sweep figure yet" in task3 and "task3_sweep.png" not in text
    assert f"on one A100, against {best} for its best LeNet." in text
    assert "60% for the report's best LeNet" not in text
    tables = text.split("| airplane | automobile |")[:-1]
    assert len(tables) == 5 and all(before.rstrip().splitlines()[-1].startswith(
        "Test accuracy per class (%) of config_") for before in tables)
    missing = text.split("## Not run yet")[1]
    hints = re.findall(r"--configs ([\d,]+)` \(roughly ([\d.]+) (min|h) on a 2-core CPU"
                       r"( with AVX512, twice that without)?\)", missing)
    # configs 1-11 of the sweep: 730 epochs of 50,000 images; ResNet's four: 12 of 5,000
    assert [(configs, bool(avx)) for configs, _, _, avx in hints] == [
        ("1,2,3,4,5,6,7,8,9,10,11", False), ("1,2,3,5", True)]  # ResNet's speed: AVX512's
    sweep_minutes, resnet_minutes = (float(time) * (60 if unit == "h" else 1)
                                     for _, time, unit, _ in hints)
    assert "`DIR` is the folder" not in missing  # no command here says DIR
    assert 30 < sweep_minutes < 180 and 5 < resnet_minutes < 20


@pytest.mark.parametrize("where", ["elsewhere", "kit"])
def test_not_run_yet_commands_write_where_the_report_reads_from_the_kits_folder_or_any(
        tmp_path, capsys, monkeypatch, where):
    """make_report run by its full path from another folder: each command names the script
    by its path and the report's folders by theirs, so it writes where this report reads,
    run from the kit's folder or any other; made in the kit's folder, they read as README's."""
    root = quick_looks(tmp_path / "modelset", monkeypatch)
    shutil.rmtree(root / "original_version_model")
    monkeypatch.chdir(tmp_path if where == "elsewhere" else REPO)
    status, text, err = report_of(root, capsys)
    assert status == 0, err
    commands = re.findall(r"`(python [^`]+)`", text.split("## Not run yet")[1])
    assert [command.split()[1] for command in commands] == [
        str(REPO / script) if where == "elsewhere" else script
        for script in ("Original_version_model.py", SWEEP, RESNET)]
    outs = [Path(command.split("--out ")[1].split()[0]) for command in commands]
    assert outs == [root / "original_version_model", root / "original_version_model_multiGPU",
                    root / "Resnet"]  # whole paths: right from any folder
    make = REPO / "make_report.py" if where == "elsewhere" else "make_report.py"
    assert f"Written by `python {make} --modelset {root}`" in text


@pytest.mark.parametrize("reported", [True, False])
def test_the_sweep_figure_has_a_panel_per_varied_setting_and_no_legend_for_stars_not_drawn(
        tmp_path, reported):
    from cifarkit import plots, report

    results = copy.deepcopy(RESULTS)
    hand_made_sweep(results, reported)
    path = tmp_path / "sweep" / "training_result.json"
    path.parent.mkdir()
    path.write_text(json.dumps(results))
    runs, _ = report.load_runs(tmp_path, make_report.read_scripts())
    (axes,) = plots.sweep_figure(runs).axes  # only lr differs among the finished configs
    stars = [line for line in axes.lines if line.get_marker() == "*" and len(line.get_xdata())]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert bool(stars) == reported == any("the report's accuracy" in label for label in legend)

    rewrite(lambda results: results.update(configs=results["configs"][:1]))(path)
    runs, _ = report.load_runs(tmp_path, make_report.read_scripts())
    assert plots.sweep_figure(runs) is None  # one config: a panel would be a lone dot
