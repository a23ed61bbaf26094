"""The everyday loop: edit CONFIGS (or the model) at the top of a script, rerun, look at the
PNGs. Only what changed trains again, nothing is lost, and a long run shows how it goes."""
import ast
import importlib
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cifarkit import train
from conftest import REPO, checkpoint_of, run_script

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
C = {"name": "c", "num_epochs": 1, "lr": 0.03, "momentum": 0.9, "batch_size": 32}


def entries(out, results_file="training_result.json"):
    return {entry["id"]: entry for entry in
            json.loads((out / results_file).read_text())["configs"]}


def test_changing_one_value_of_one_config_trains_only_that_config(pickled_data, tmp_path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [A, B, C], monkeypatch) == 0
    kept = {name: (out / name).read_bytes() for name in ("config_1.pth", "config_3.pth")}
    old_b = (out / "config_2.pth").read_bytes()
    old_run = entries(out)["config_2"]["run"]
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
    assert now["config_2"]["config"]["lr"] == 0.05 and now["config_2"]["run"] != old_run


def test_removing_a_config_keeps_its_run(pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [A, B], monkeypatch) == 0
    weights, run_b = (out / "config_2.pth").read_bytes(), entries(out)["config_2"]["run"]
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [A], monkeypatch) == 0
    assert "config_2 differs from its earlier results: it is no longer in CONFIGS (it was " \
        "'b'); its run stays in" in capsys.readouterr().out
    assert (out / run_b / "weights.pth").read_bytes() == weights
    assert list(entries(out)) == ["config_1"] and not (out / "config_2.pth").exists()


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


def test_kill_9_during_the_live_refresh_leaves_whole_files(pickled_data, tmp_path):
    """Many short epochs, so the JSON and PNGs are rewritten all the time; kill -9 at spread
    moments, and every file on disk is whole (a live JSON shows the run as running)."""
    out = tmp_path / "out"
    code = ("import sys, Original_version_model_multiGPU as s; "
            "s.CONFIGS = [dict(num_epochs=400, lr=0.01, momentum=0.9, batch_size=100)]; "
            "sys.exit(s.main(sys.argv[1:]))")
    seen_running = False
    for delay in (0.0, 0.7, 1.5):
        process = subprocess.Popen([sys.executable, "-c", code, "--data-dir", str(pickled_data),
                                    "--out", str(out), "--device", "cpu"], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        epoch_lines = 0
        while epoch_lines < 2:  # the first epoch's files are written before the second ends
            epoch_lines += "/400: loss" in process.stdout.readline()
            assert process.poll() is None
        time.sleep(delay)
        process.kill()
        process.wait()
        results = json.loads((out / "training_result.json").read_text())
        (entry,) = results["configs"]
        seen_running |= entry["status"] == "running" and len(entry["history"]) >= 1
        for png in ("loss.png", "train_accuracy.png", "test_accuracy.png"):
            with Image.open(out / png) as image:
                image.verify()
        # kill -9 can leave a temporary file of an unfinished write, and nothing else
        assert all(path.name.endswith(".tmp") for path in out.glob(".*"))
    assert seen_running


@pytest.mark.parametrize("window", [0.0, 1e9])
def test_an_estimate_comes_before_the_long_wait(window, pickled_data, tmp_path, monkeypatch,
                                                capsys):
    """Timed over 40 steps and ESTIMATE_SECONDS: inside the first epoch when it lasts longer
    (75 steps here, the window shrunk to nothing), else from the whole first epoch."""
    monkeypatch.setattr(train, "ESTIMATE_SECONDS", window)
    configs = [dict(A, batch_size=4, num_epochs=2), dict(B, batch_size=4, num_epochs=3)]
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, configs, monkeypatch) == 0
    printed = capsys.readouterr().out
    (line,) = [line for line in printed.splitlines() if "an epoch on this CPU" in line]
    assert line.startswith("config_1: about ")
    assert "the 2 run(s) to train need about " in line
    if window:
        assert printed.index("config_1 epoch 1/2") < printed.index(line)
    else:
        assert printed.index(line) < printed.index("config_1 epoch 1/2")


def test_each_script_defines_its_own_model_and_opens_on_its_configs():
    for name in ("Original_version_model", "Original_version_model_multiGPU",
                 "L2_regularization", "Dropout_regularization", "Resnet_model"):
        tree = ast.parse((REPO / f"{name}.py").read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not imported & {"Original_version_model", "Original_version_model_multiGPU",
                               "L2_regularization", "Dropout_regularization", "Resnet_model"}
        first = next(node for node in tree.body
                     if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)))
        assert isinstance(first, ast.Assign) and first.targets[0].id == "CONFIGS", name
        assert any(isinstance(node, ast.ClassDef) for node in tree.body), name


def test_a_model_setting_is_declared_by_its_script(pickled_data, tmp_path, monkeypatch,
                                                   capsys):
    script = importlib.import_module("Dropout_regularization")
    monkeypatch.setattr(script, "MODEL_SETTINGS", dict(
        script.MODEL_SETTINGS, width={"kind": "int", "min": 1, "default": 120}))
    assert run_script("Dropout_regularization", tmp_path / "out", pickled_data,
               [dict(A, width=0)], monkeypatch) == 2
    assert "config_1: 'width' must be at least 1, got 0." in capsys.readouterr().err
    monkeypatch.setattr(script, "MODEL_SETTINGS", {"dropout": {"kind": "float", "maxx": 1}})
    assert run_script("Dropout_regularization", tmp_path / "out", pickled_data, [A],
               monkeypatch) == 2
    assert "MODEL_SETTINGS['dropout']: must be a dict with 'kind'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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
    assert [entries(out)[label]["config"]["name"] for label in ("config_1", "config_2")] == [
        "b", "a"]
