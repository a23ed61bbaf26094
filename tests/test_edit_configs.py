"""Editing CONFIGS (or the model, the data, the flags) between runs: only what changed trains
again, and the line that says so names the change; what was trained is never rewritten,
moved or lost (every (config, seed) trains in a run folder of its own under runs/, written
once), and config_N.pth, the results JSON, the PNGs and the report's earlier curves are views
of the runs CONFIGS selects now, rebuilt after every edit, undo, reorder or --restart. A
folder of the kit before the run store is refused and left as it is."""
import importlib
import json
import pickle
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import make_report
import predict
from cifarkit import config, train
from cifarkit.errors import UserError
from conftest import (ORIGINAL, assert_still_there, assert_views_are_the_runs,
                      checkpoint_of, entries, finished_runs, run_script, with_checkpoint,
                      write_pickled_batches, write_probe)

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
C = {"name": "c", "num_epochs": 1, "lr": 0.03, "momentum": 0.9, "batch_size": 32}
# runs out of memory in its second epoch (with_checkpoint): its run keeps the checkpoint of
# epoch 1
D = {"name": "d", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 30}
TINY = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
SCRIPT = "L2_regularization"
RESULTS = "training_result.json"
# The PNGs are built, not rendered (conftest's unrendered: rendering is most of what a run
# costs here), except in the tests that ask for rendered.
pytestmark = pytest.mark.usefixtures("unrendered")


def views(out, results_file=RESULTS):
    """{config id: (its run, its weights view's bytes or None)} of the results JSON."""
    results = json.loads((out / results_file).read_text())
    return {entry["id"]: (entry["run"], (out / entry["weights"]).read_bytes()
                          if entry["weights"] else None) for entry in results["configs"]}


# ---- a changed value, a removed, inserted or swapped config, an undo, --restart ----

@pytest.mark.usefixtures("rendered")
def test_changing_one_value_of_one_config_trains_only_that_config(pickled_data, tmp_path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [A, B, C], monkeypatch) == 0
    kept = {name: (out / name).read_bytes() for name in ("config_1.pth", "config_3.pth")}
    old_b = (out / "config_2.pth").read_bytes()
    old_run = entries(out)[("config_2", 0)]["run"]
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [A, dict(B, lr=0.05), C],
                      monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: already finished" in printed and "config_3: already finished" in printed
    assert "config_2 differs from its earlier results: lr 0.02 -> 0.05" in printed
    assert "config_2 epoch 1/1" in printed and "config_1 epoch" not in printed
    assert {name: (out / name).read_bytes() for name in kept} == kept  # not retrained
    assert (out / old_run / "weights.pth").read_bytes() == old_b  # the earlier run stays
    assert json.loads((out / old_run / "run.json").read_text())["config"]["lr"] == 0.02
    now = entries(out)
    assert [now[label]["config"]["name"] for label in sorted(now)] == ["a", "b", "c"]
    assert now[("config_2", 0)]["config"]["lr"] == 0.05 and now[("config_2", 0)]["run"] != old_run


def test_the_line_for_a_changed_config_says_what_changed(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    out = tmp_path / "out"

    def rerun(*flags, configs=(TINY,)):
        capsys.readouterr()
        assert run_script("L2_regularization", out, pickled_data, list(configs), monkeypatch,
                          *flags) == 0
        return capsys.readouterr().out

    rerun("--subset", "100")
    assert ("config_1 differs from its earlier results: the data (train_images 100 -> 200, "
            "test_images 33 -> 67); it trains anew") in rerun("--subset", "200")
    assert "config_1 differs from its earlier results: num_epochs 1 -> 2; it trains anew" in \
        rerun("--subset", "200", "--epochs", "2")
    printed = rerun("--subset", "200", "--epochs", "2", configs=[dict(TINY, lr=0.02)])
    (line,) = [line for line in printed.splitlines() if "config_1 differs" in line]
    assert "config_1 differs from its earlier results: lr 0.01 -> 0.02; it trains anew" in line
    assert "num_epochs" not in line  # --epochs was typed, but only lr changed


def test_a_change_from_the_scripts_default_value_names_the_value_it_had(pickled_data, tmp_path,
                                                                       monkeypatch, capsys):
    """The Dropout script's default rate, 0.5, written out in a config, then changed."""
    out, config = tmp_path / "out", dict(TINY, dropout=0.5)
    for configs in ([config], [dict(config, dropout=0.3)]):
        capsys.readouterr()
        assert run_script("Dropout_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert "config_1 differs from its earlier results: dropout 0.5 -> 0.3" in \
        capsys.readouterr().out


def test_make_report_during_a_changed_configs_first_epoch(pickled_data, tmp_path, monkeypatch):
    """Its run, made by --restart and without an epoch yet, beside the earlier run of the same
    name: reported, no crash."""
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    real_take_turn = train.rt.take_turn
    monkeypatch.setattr(train.rt, "take_turn", lambda runtime: (
        signal.raise_signal(signal.SIGINT), real_take_turn(runtime))[1])
    assert run_script(SCRIPT, out, pickled_data, [dict(A, lr=0.02)], monkeypatch,
                      "--restart") == 130
    assert entries(out)[("config_1", 0)]["history"] == []
    assert make_report.main(["--modelset", str(tmp_path)]) == 0


def test_a_config_changed_away_from_its_twin_is_not_called_moved(pickled_data, tmp_path,
                                                                monkeypatch, capsys):
    """Two configs the same but for their names share one run; the second changed then trains
    anew, and says what changed (not "config_2 is config_1 now")."""
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, dict(A, name="twin")], monkeypatch) == 0
    assert "the 1 run(s) to train need" in capsys.readouterr().out  # the twin trains once
    assert run_script(SCRIPT, out, pickled_data, [A, dict(A, name="twin", lr=0.02)],
                      monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_2 differs from its earlier results: lr 0.01 -> 0.02; it trains anew" in printed
    assert "now (the same config" not in printed


def test_a_changed_default_retrains_the_configs_that_left_it_out_and_only_them(
        pickled_data, tmp_path, monkeypatch, capsys):
    """The Dropout script's default rate changed from 0.5 to 0.3: the config that wrote 0.5
    out trains as before; the one that left it out now trains at 0.3, and says so."""
    out, configs = tmp_path / "out", [dict(TINY, dropout=0.5), dict(TINY, lr=0.02)]
    assert run_script("Dropout_regularization", out, pickled_data, configs, monkeypatch) == 0
    script = importlib.import_module("Dropout_regularization")
    monkeypatch.setitem(script.MODEL_SETTINGS, "dropout",
                        dict(script.MODEL_SETTINGS["dropout"], default=0.3))
    capsys.readouterr()
    assert run_script("Dropout_regularization", out, pickled_data, configs, monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: already finished" in printed
    assert "config_2 differs from its earlier results: dropout 0.5 -> 0.3, the model; it trains" in \
        printed


@pytest.mark.usefixtures("rendered")
def test_a_changed_config_trains_a_new_run_beside_its_earlier_one(pickled_data, tmp_path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "out"
    first = [{"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}]
    assert run_script("L2_regularization", out, pickled_data, first, monkeypatch) == 0
    earlier_weights = (out / "config_1.pth").read_bytes()

    # The same command again: nothing retrained, nothing new in the store.
    assert run_script("L2_regularization", out, pickled_data, first, monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert len(list(out.glob("runs/*"))) == 1

    changed = [dict(first[0], lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, changed, monkeypatch) == 0
    assert "config_1 differs from its earlier results: lr 0.01 -> 0.02" in capsys.readouterr().out
    records = sorted((json.loads(path.read_text()) for path in out.glob("runs/*/run.json")),
                     key=lambda record: record["created"])
    assert [record["config"]["lr"] for record in records] == [0.01, 0.02]
    assert earlier_weights in {path.read_bytes() for path in out.glob("runs/*/weights.pth")}
    new = json.loads((out / "training_result.json").read_text())
    assert new["configs"][0]["config"]["lr"] == 0.02

    assert run_script("L2_regularization", out, pickled_data, changed, monkeypatch,
                      "--restart") == 0
    assert len(list(out.glob("runs/*/weights.pth"))) == 3  # --restart: a new run beside
    assert "config_1 epoch 1/1" in capsys.readouterr().out


@pytest.mark.usefixtures("rendered")
def test_removing_a_config_keeps_its_run(pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [A, B], monkeypatch) == 0
    weights, run_b = (out / "config_2.pth").read_bytes(), entries(out)[("config_2", 0)]["run"]
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [A], monkeypatch) == 0
    assert "config_2 differs from its earlier results: it is no longer in CONFIGS (it was " \
        "'b'); its run stays in" in capsys.readouterr().out
    assert (out / run_b / "weights.pth").read_bytes() == weights
    assert list(entries(out)) == [("config_1", 0)] and not (out / "config_2.pth").exists()


@pytest.mark.usefixtures("rendered")
def test_inserting_or_swapping_configs_retrains_nothing_and_files_follow(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [A, B], monkeypatch) == 0
    weights = {name: (out / f"{label}.pth").read_bytes()
               for name, label in (("a", "config_1"), ("b", "config_2"))}
    new = dict(C, name="new")
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [new, A, B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1 is config_2 now (the same config, moved in CONFIGS)" in printed
    assert "config_2: already finished" in printed and "config_3: already finished" in printed
    assert "config_2 epoch" not in printed and "config_3 epoch" not in printed

    def by_name():
        return {entry["config"]["name"]: entry for entry in entries(out).values()}

    assert {name: entry["id"] for name, entry in by_name().items()} == {
        "new": "config_1", "a": "config_2", "b": "config_3"}
    assert {name: entry["weights"] for name, entry in by_name().items()} == {
        "new": "config_1.pth", "a": "config_2.pth", "b": "config_3.pth"}
    assert (out / by_name()["a"]["weights"]).read_bytes() == weights["a"]
    assert (out / by_name()["b"]["weights"]).read_bytes() == weights["b"]

    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [B, A], monkeypatch) == 0  # swap
    printed = capsys.readouterr().out
    assert "epoch 1/1" not in printed  # nothing trained
    assert "config_1 differs from its earlier results: it is no longer in CONFIGS" in printed
    assert (out / "config_1.pth").read_bytes() == weights["b"]
    assert (out / "config_2.pth").read_bytes() == weights["a"]
    assert [entries(out)[(label, 0)]["config"]["name"] for label in ("config_1", "config_2")] == [
        "b", "a"]


@pytest.mark.usefixtures("rendered")
def test_undoing_an_edit_trains_nothing_and_brings_back_every_view(pickled_data, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    first, results = views(out), json.loads((out / RESULTS).read_text())
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    assert views(out)["config_2"] != first["config_2"]
    capsys.readouterr()
    (out / "test_accuracy.png").unlink()  # a view a kill left out: rebuilt too
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert " epoch " not in printed and "config_2: already finished" in printed
    assert "it shows its earlier run" in printed
    assert views(out) == first
    now = json.loads((out / RESULTS).read_text())
    assert [entry["history"] for entry in now["configs"]] == \
        [entry["history"] for entry in results["configs"]]
    assert all((out / name).is_file() for name in ("loss.png", "test_accuracy.png",
                                                   "train_accuracy.png", "examples.png"))


@pytest.mark.usefixtures("rendered")
def test_edits_reorders_restarts_and_undos_never_touch_a_finished_run(pickled_data, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "out"
    steps = [([A, B], []), ([A, dict(B, lr=0.05)], []), ([dict(B, lr=0.05), A], []),
             ([dict(B, lr=0.05), A], ["--restart", "--configs", "2"]), ([A], []), ([A, B], [])]
    seen = {}
    for configs, flags in steps:
        assert run_script(SCRIPT, out, pickled_data, configs, monkeypatch, *flags) == 0
        assert_still_there(seen, out)
        seen = finished_runs(out)
        assert_views_are_the_runs(out, pickled_data)
    assert len(seen) == 4  # a, b, b with lr 0.05, a again (--restart)
    printed = capsys.readouterr().out
    assert "config_2 differs from its earlier results: lr 0.02 -> 0.05; it trains anew" in printed


def test_restart_of_some_configs_trains_new_runs_and_touches_nothing_else(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    configs = [TINY, dict(TINY, lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    before, first = finished_runs(out), (out / "config_1.pth").read_bytes()
    mine = {"notes.txt": b"my notes", "my_model.pth": b"not the kit's",
            "figures/plot.png": b"mine", "checkpoints/config_1_seed0.bak.ckpt": b"a backup"}
    for name, content in mine.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(content)
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch, "--restart",
                      "--configs", "2") == 0
    printed = capsys.readouterr().out
    assert "config_2 epoch 1/1" in printed and "config_1 epoch" not in printed
    after = finished_runs(out)
    assert len(after) == 3 and {name: after[name] for name in before} == before
    assert (out / "config_1.pth").read_bytes() == first
    (entry,) = [entry for entry in json.loads((out / "training_result.json").read_text())[
        "configs"] if entry["id"] == "config_2"]
    assert Path(entry["run"]).name not in before  # config_2 shows its new run
    assert all((out / name).read_bytes() == content for name, content in mine.items())


def test_a_restart_stopped_carries_on_without_restart_with_the_configs_it_had_not_reached(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    configs = [TINY, dict(TINY, lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    before = finished_runs(out)
    real_measure = train.measure
    monkeypatch.setattr(train, "measure", lambda *args, **kwargs: (
        signal.raise_signal(signal.SIGINT), real_measure(*args, **kwargs))[1])
    second = (out / "config_2.pth").read_bytes()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch,
                      "--restart") == 130  # during config_1's last test pass
    monkeypatch.setattr(train, "measure", real_measure)
    assert (out / "config_2.pth").read_bytes() == second  # shown until its new run begins
    assert make_report.main(["--modelset", str(tmp_path)]) == 0
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: already finished" in printed and "config_2 epoch 1/1" in printed
    assert "the 1 run(s) to train need" in printed  # the estimate counts what will train
    after = finished_runs(out)
    assert len(after) == 4 and {name: after[name] for name in before} == before
    assert not set(before) & {Path(entry["run"]).name for entry in entries(out).values()}


def test_a_changed_config_not_selected_is_never_shown_with_the_weights_of_another(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    before = finished_runs(out)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch,
                      "--configs", "1") == 0
    printed = capsys.readouterr().out
    assert "config_2 differs from its earlier results: lr 0.02 -> 0.05" in printed
    assert "config_2 epoch" not in printed
    shown = entries(out)
    assert ("config_2", 0) not in shown or shown[("config_2", 0)]["config"]["lr"] == 0.02
    assert finished_runs(out) == before
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    assert "config_2 epoch 1/1" in capsys.readouterr().out
    assert entries(out)[("config_2", 0)]["config"]["lr"] == 0.05


def test_a_diverged_config_with_a_lower_lr_trains_again(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [dict(B, lr=1e30)], monkeypatch) == 1
    assert entries(out)[("config_1", 0)]["status"] == "diverged"
    # was "cannot write ...: rerun"
    assert run_script(SCRIPT, out, pickled_data, [B], monkeypatch) == 0
    assert entries(out)[("config_1", 0)]["status"] == "finished"
    statuses = sorted(json.loads(files["run.json"])["status"]
                      for files in finished_runs(out).values())
    assert statuses == ["diverged", "finished"]  # the diverged run stays
    capsys.readouterr()
    # shown again
    assert run_script(SCRIPT, out, pickled_data, [dict(B, lr=1e30)], monkeypatch) == 1
    printed = capsys.readouterr().out
    assert "config_1: already diverged in" in printed and " epoch 1/1" not in printed
    assert run_script(SCRIPT, out, pickled_data, [dict(B, lr=1e30)], monkeypatch, "--restart") == 1
    captured = capsys.readouterr()  # trained again, and it diverged again
    assert "config_1: the loss became NaN or infinite" in captured.err
    assert "cannot write" not in captured.err
    assert len(finished_runs(out)) == 3


@pytest.mark.usefixtures("rendered")
def test_the_report_shows_a_configs_earlier_curve_beside_its_current_one(pickled_data, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "modelset" / "L2_regularization_model"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    assert make_report.main(["--modelset", str(tmp_path / "modelset")]) == 0
    report = (tmp_path / "modelset" / "REPORT.md").read_text()
    assert "**config_2, earlier runs**" in report and "lr 0.02 -> 0.05" in report
    assert "**config_1, earlier runs**" not in report
    figure = tmp_path / "modelset" / "figures" / "L2_regularization_model_config_2_earlier.png"
    assert figure.is_file() and f"({figure.relative_to(tmp_path / 'modelset')})" in report
    # config_1 retrained because its weights were deleted; config_2 because of --restart
    (out / entries(out)[("config_1", 0)]["run"] / "weights.pth").unlink()
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch,
                      "--configs", "1") == 0
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch,
                      "--configs", "2", "--restart") == 0
    assert make_report.main(["--modelset", str(tmp_path / "modelset")]) == 0
    report = (tmp_path / "modelset" / "REPORT.md").read_text()
    config_1, config_2 = (next(line for line in report.splitlines()
                               if line.startswith(f"**config_{n}, earlier runs**"))
                          for n in (1, 2))
    assert "the same config, trained again (its weights were deleted or changed)" in config_1
    assert "--restart" not in config_1
    assert "the same config, trained again (--restart)" in config_2


def test_a_run_folder_renamed_by_hand_keeps_its_views_and_is_not_trained_again(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    was = entries(out)[("config_1", 0)]["run"]
    (out / was).rename(out / "runs" / "mine")
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert f"config_1: its run {was} is runs/mine now (its folder renamed or copied): its " \
           f"results are kept" in printed
    assert "config_1: already finished in " in printed and "differs" not in printed
    (out / "runs" / "mine").rename(out / "runs" / "my_best_run")  # and make_report sees it
    assert make_report.main(["--modelset", str(tmp_path)]) == 0
    assert entries(out)[("config_1", 0)]["run"] == "runs/my_best_run"
    assert_views_are_the_runs(out, pickled_data)  # config_1.pth kept: the renamed run's
    second = out / entries(out)[("config_2", 0)]["run"]  # two runs' names swapped
    (out / "runs" / "my_best_run").rename(out / "runs" / "swap")
    second.rename(out / "runs" / "my_best_run")
    (out / "runs" / "swap").rename(second)
    assert make_report.main(["--modelset", str(tmp_path)]) == 0
    assert [entries(out)[(label, 0)]["config"]["lr"] for label in ("config_1", "config_2")] == \
        [A["lr"], B["lr"]]
    assert_views_are_the_runs(out, pickled_data)
    first, second = (out / entries(out)[(label, 0)]["run"] for label in ("config_1", "config_2"))
    first.rename(out / "runs" / "swap")  # swapped again, and the script run
    second.rename(first)
    (out / "runs" / "swap").rename(second)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert printed.count("(its folder renamed or copied)") == 2 and "moved" not in printed


# ---- what is not a change: a label, a reported figure, a new key's default, numpy numbers ----

def test_a_name_or_a_reported_figure_edited_retrains_nothing_and_is_redrawn(
        pickled_data, tmp_path, monkeypatch, capsys, rendered):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    before, weights = finished_runs(out), (out / "config_1.pth").read_bytes()
    drawn = (out / "loss.png").read_bytes()
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [dict(A, name="first", reported_accuracy=60.0), B],
                      monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: name 'a' -> 'first', reported_accuracy '(unset)' -> 60.0 (a label: its " \
           "results are kept)" in printed
    assert "config_1: already finished" in printed and " epoch 1/1" not in printed
    assert (out / "loss.png").read_bytes() != drawn  # its legend names config_1 first
    assert (out / "config_1.pth").read_bytes() == weights
    assert entries(out)[("config_1", 0)]["config"]["name"] == "first"
    assert finished_runs(out) == before  # the runs themselves are not rewritten


def test_a_key_added_to_the_kit_with_a_default_keeps_finished_results(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    before = finished_runs(out)
    monkeypatch.setitem(config.TRAINING_KEYS, "grad_clip",
                        ("float", lambda value: value >= 0, "0 or more"))
    monkeypatch.setitem(config.DEFAULTS, "grad_clip", 0.0)
    monkeypatch.setitem(config.NEUTRAL, "grad_clip", 0.0)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: already finished" in printed and "differs" not in printed
    assert finished_runs(out) == before


def test_numpy_numbers_in_configs_train_save_and_resume(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    configs = [{"num_epochs": np.int64(1), "lr": np.float32(0.01), "momentum": np.float64(0.9),
                "batch_size": np.int64(32), "nesterov": np.bool_(True)}]
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    assert entry["config"]["batch_size"] == 32 and entry["config"]["nesterov"] is True
    assert entry["config"]["lr"] == pytest.approx(0.01)
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert len(finished_runs(out)) == 1


def test_the_same_images_under_another_path_spelling_retrain_nothing(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    before = finished_runs(out)
    monkeypatch.chdir(pickled_data.parent)
    capsys.readouterr()
    assert run_script(SCRIPT, out, Path("..") / pickled_data.parent.name / pickled_data.name, [A],
                      monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: already finished" in printed and "differs" not in printed
    assert finished_runs(out) == before


def test_a_folder_moved_since_its_last_run_is_named_where_it_is_now(pickled_data, tmp_path,
                                                                   monkeypatch, capsys):
    """Trained with `--out .`, the folder then moved (mv out moved): the lines name where
    the runs are now (not the old path, nor a path relative to the first run's folder)."""
    out, moved = tmp_path / "out", tmp_path / "moved"
    out.mkdir()
    with monkeypatch.context() as patch:
        patch.chdir(out)
        assert run_script(SCRIPT, Path("."), pickled_data, [A], patch) == 0
    out.rename(moved)
    capsys.readouterr()
    assert run_script(SCRIPT, moved, pickled_data, [dict(A, lr=0.05)], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert f"(the run it replaces stays in {moved}/runs/config_1-a-" in printed
    assert str(out) not in printed.replace(str(moved), "")
    for entry in entries(moved).values():
        assert (moved / entry["run"] / "run.json").is_file()


# ---- an edited model, normalization or data ----

class WiderLeNet(nn.Module):
    """The tutorial's LeNet with 32 channels in its second convolution."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 32, 5)
        self.fc1 = nn.Linear(32 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class GeluLeNet(WiderLeNet):
    """The same shapes as WiderLeNet: only its code tells them apart."""

    def forward(self, x):
        x = self.pool(F.gelu(self.conv1(x)))
        x = self.pool(F.gelu(self.conv2(x)))
        x = F.gelu(self.fc1(x.flatten(1)))
        return self.fc3(F.gelu(self.fc2(x)))


@pytest.mark.usefixtures("rendered")
def test_a_changed_model_class_retrains_finished_and_unfinished_configs(
        pickled_data, tmp_path, monkeypatch, capsys):
    script = importlib.import_module("L2_regularization")
    out = tmp_path / "out"
    long_b = dict(B, num_epochs=3)
    assert run_script("L2_regularization", out, pickled_data, [A], monkeypatch) == 0
    real_accuracy = train.accuracy

    def ctrl_c_at_the_first_test_pass(*args, **kwargs):  # leaves config_2 unfinished
        signal.raise_signal(signal.SIGINT)
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(train, "accuracy", ctrl_c_at_the_first_test_pass)
    assert run_script("L2_regularization", out, pickled_data, [A, long_b], monkeypatch) == 130
    unfinished = checkpoint_of(out, "config_2")
    assert unfinished.exists()
    monkeypatch.setattr(train, "accuracy", real_accuracy)

    monkeypatch.setattr(script, "LeNet", WiderLeNet)
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [A, long_b], monkeypatch) == 0
    captured = capsys.readouterr()
    assert "config_1 differs from its earlier results: the model; it trains anew" in captured.out
    assert "config_2 epoch 1/3" in captured.out and "resuming" not in captured.out
    assert "Traceback" not in captured.err and "RuntimeError" not in captured.err
    assert unfinished.exists()  # the earlier, unfinished run keeps its checkpoint
    weights = torch.load(out / "config_1.pth", weights_only=True)
    assert weights["conv2.weight"].shape[0] == 32  # retrained with the new model

    monkeypatch.setattr(script, "LeNet", GeluLeNet)  # same shapes, other code
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [A, long_b], monkeypatch) == 0
    assert "config_1 differs from its earlier results: the model" in capsys.readouterr().out


def test_an_edited_model_class_and_one_config_selected_is_no_traceback(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    script = importlib.import_module(SCRIPT)
    lenet = type(script.build_model({}))  # the script's model class, whatever its name

    class Wider(lenet):  # fc2 84 -> 80: the earlier weights no longer fit
        def __init__(self):
            super().__init__()
            self.fc2, self.fc3 = torch.nn.Linear(120, 80), torch.nn.Linear(80, 10)

    monkeypatch.setattr(script, "build_model", lambda config: Wider())
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch, "--configs", "1") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "config_1 epoch 1/1" in captured.out
    assert "config_1 differs from its earlier results: the model; it trains anew" in \
        captured.out
    assert "config_2 epoch" not in captured.out


@pytest.mark.usefixtures("rendered")
@pytest.mark.parametrize("edit, retrains", [
    ({"INIT_LINE": "torch.nn.init.zeros_(model.fc1.weight)"}, True),
    ({"HIDDEN_ACT = F.relu": "HIDDEN_ACT = torch.tanh"}, True),
    ({"pass": "pass  # a comment, and a blank line\n"}, False),
    ({"INIT_LINE": "model.conv.requires_grad_(False)"}, True),  # same outputs, trains apart
], ids=["build_model's initialisation", "a module-level activation", "a comment",
        "a layer frozen in build_model"])
def test_what_the_model_computes_decides_whether_it_retrains(edit, retrains, pickled_data, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    script = write_probe(tmp_path)
    assert run_script(script, out, pickled_data, None, None) == 0
    edits = {key: value for key, value in edit.items() if key in ORIGINAL}
    script = write_probe(tmp_path, **edits) if edits else None
    if not edits:  # an edit of the template's text itself
        key, value = next(iter(edit.items()))
        (tmp_path / "probe_script.py").write_text(
            (tmp_path / "probe_script.py").read_text().replace(key, value))
        sys.modules.pop("probe_script", None)
        script = importlib.import_module("probe_script")
    capsys.readouterr()
    assert run_script(script, out, pickled_data, None, None) == 0
    printed = capsys.readouterr().out
    assert ("already finished" not in printed) == retrains, printed
    if retrains:
        assert "config_1 differs from its earlier results: the model; it trains anew" in printed


def test_a_model_built_with_numpys_and_pythons_random_numbers_is_the_same_model_on_a_rerun(
        pickled_data, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    script = write_probe(tmp_path, INIT_LINE="torch.nn.init.constant_(model.fc2.bias, float("
                         "__import__('numpy').random.rand()) + __import__('random').random())")
    assert run_script(script, tmp_path / "out", pickled_data, None, None) == 0
    capsys.readouterr()
    assert run_script(script, tmp_path / "out", pickled_data, None, None) == 0
    assert "config_1: already finished" in capsys.readouterr().out


def test_an_edited_normalization_never_resumes_or_keeps_a_result(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with_checkpoint(out, pickled_data, [A, D])
    checkpoint = checkpoint_of(out, "config_2")
    assert checkpoint.is_file()
    script = importlib.import_module(SCRIPT)
    monkeypatch.setattr(script, "NORMALIZATION", ((0.4, 0.5, 0.6), (0.2, 0.2, 0.2)))
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, D], monkeypatch) == 0
    printed = capsys.readouterr().out
    for label in ("config_1", "config_2"):
        assert (f"{label} differs from its earlier results: the data (normalization "
                f"[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]] -> [[0.4, 0.5, 0.6], [0.2, 0.2, 0.2]]); "
                f"it trains anew") in printed
    assert "resuming" not in printed and "already finished" not in printed
    assert checkpoint.is_file()  # the other normalization's run keeps its checkpoint
    assert checkpoint_of(out, "config_2") != checkpoint


def test_data_replaced_in_place_is_noticed(tmp_path, monkeypatch, capsys):
    data_dir = write_pickled_batches(tmp_path / "data")
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, data_dir, [TINY], monkeypatch) == 0
    batch = data_dir / "cifar-10-batches-py" / "data_batch_1"
    content = pickle.loads(batch.read_bytes())
    content["data"] = 255 - content["data"]  # the same path, the same counts, other pixels
    batch.write_bytes(pickle.dumps(content))
    capsys.readouterr()
    assert run_script("L2_regularization", out, data_dir, [TINY], monkeypatch) == 0
    assert ("config_1 differs from its earlier results: the data (other images, as many); it "
            "trains anew") in capsys.readouterr().out


# ---- a folder written by the kit before the run store ----

def test_a_folder_of_the_kit_before_the_store_is_refused_and_left_as_it_is(pickled_data, tmp_path,
                                                                           monkeypatch, capsys):
    """No runs/ and a results JSON naming no runs, or an old kit's .ledger files: the script
    refuses it and make_report names it as skipped; neither changes a byte of it."""
    modelset = tmp_path / "modelset"
    old, cut_short = modelset / "L2_regularization_model", modelset / "a-move-cut-short"
    assert run_script(SCRIPT, old, pickled_data, [TINY], monkeypatch) == 0
    shutil.copytree(old, cut_short)
    results = json.loads((old / RESULTS).read_text())
    for entry in results["configs"]:
        del entry["run"]  # as the kit wrote it before the run store
    (old / RESULTS).write_text(json.dumps(results))
    shutil.rmtree(old / "runs")
    (cut_short / ".ledger.json").write_text("{}")  # an old kit's move, with runs/ and run fields
    def files():
        return {path: path.read_bytes() for out in (old, cut_short) for path in out.rglob("*")
                if path.is_file()}
    before = files()
    capsys.readouterr()
    for out, why in ((old, f"{RESULTS} naming no runs"), (cut_short, ".ledger.json")):
        assert run_script(SCRIPT, out, pickled_data, [TINY, B], monkeypatch) == 2
        assert (f"--out {out}: written by a version of the kit before the run store ({why})"
                in capsys.readouterr().err)
    assert make_report.main(["--modelset", str(modelset)]) == 0
    said = capsys.readouterr().err
    for out in (old, cut_short):
        assert f"{out / RESULTS}: written by a version of the kit before the run store" in said
    with pytest.raises(UserError, match="its folder was written by a version of the kit before"):
        predict.load_trained(old / "config_1.pth")
    assert files() == before and not (old / "runs").exists()
