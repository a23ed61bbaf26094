"""Running the scripts as a user does: each of the five end to end on generated data (and
one on real images), the data layouts and --subset, the flags, the recipes' augmentation,
schedules and precision, what a run prints and draws, where its files go, and Task 2's
strength curve in REPORT.md.

Elsewhere: bad input and failures (test_bad_input.py), editing CONFIGS between runs
(test_edit_configs.py), stopping and resuming (test_resume_and_signals.py), torchrun
(test_distributed.py), predict.py (test_predict.py), README's own commands (test_readme.py).
"""
import copy
import contextlib
import fcntl
import importlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import types

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import functional as TF

import make_report
from cifarkit import data, plots, results, train
from cifarkit import runtime as rt
from cifarkit.results import save_json
from Original_version_model import build_model
from conftest import (REPO, TEST_PER_CLASS, TRAIN_PER_CLASS, blanked_squares, finished_runs,
                      labelled_images, make_images, run_command, run_script,
                      shared_jpeg_or_skip, unrendered_png, windows_found, write_pickled_batches)

# The PNGs are built, not rendered (conftest's unrendered: rendering is most of what a run
# costs here), except in the tests that ask for rendered.
pytestmark = pytest.mark.usefixtures("unrendered")

# module, data layout (each layout decodes to the same images: see
# test_every_layout_reads_the_images_that_were_written), results JSON, weights file of
# config N, extra argv (ResNet is slow on the CPU)
SCRIPTS = {
    "Original_version_model": ("folder", "training_loss.json", lambda number: "model.pth", []),
    "Original_version_model_multiGPU": ("pickled", "training_result.json",
                                        "config_{}.pth".format, []),
    "L2_regularization": ("archive", "training_result.json", "config_{}.pth".format, []),
    "Dropout_regularization": ("folder", "training_result.json", "config_{}.pth".format, []),
    # ResNet is slow on the CPU, and its recipe (batch 512) does not fit a 130-image
    # subset (test_resnet_recipe_keys): the report's best, chosen by name
    "Resnet_model": ("pickled", "Resnet_model_result.json", "config_{}.pth".format,
                     ["--subset", "130", "--configs", "best"]),
}
RUN_FIELDS = {"script", "command", "devices", "data", "seed", "versions", "configs"}
CONFIG_FIELDS = {"id", "seed", "config", "history", "final_test_accuracy",
                 "best_test_accuracy", "final_train_accuracy", "train_seconds", "weights",
                 "status", "per_class_accuracy", "confusion_matrix", "precision", "compiled"}
EPOCH_FIELDS = {"epoch", "train_loss", "train_accuracy", "train_accuracy_eval", "test_accuracy",
                "lr", "seconds"}
PRECISIONS = {"fp32": None, "bf16 autocast": torch.bfloat16}

# Small configs of the tests' own, so that an edit of a script's CONFIGS breaks no test
TINY = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 8}
DROPOUT = [dict(TINY, dropout=0.0), dict(TINY, dropout=0.5)]
A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
SMALL = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
RESULTS = "training_result.json"


def reload_and_score(script, entry, weights_path, dataset, tta=False):
    """Accuracy of the saved weights, loaded as a user would, on the run's test images, in
    the precision the results say the run used, with or without flip TTA."""
    model = script.build_model(entry["config"])
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    scale, shift = data.normalizer(*script.NORMALIZATION, device="cpu")
    cpu = rt.Runtime(torch.device("cpu"), amp_dtype=PRECISIONS[entry["precision"]])
    model = rt.place_model(model, cpu)
    predictions = train.predict(model, dataset.test_images, scale, shift, cpu, tta)
    return train.accuracy(predictions, dataset.test_labels)


def without_timings(history):
    return [{key: value for key, value in record.items() if key != "seconds"}
            for record in history]


# ---- each script, end to end ----

@pytest.mark.usefixtures("rendered")
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_writes_every_output_and_weights_reload(name, request, tmp_path, capsys):
    script = importlib.import_module(name)
    layout, results_file, weights_file, extra = SCRIPTS[name]
    data_dir = request.getfixturevalue(f"{layout}_data")
    out = tmp_path / "out"
    status = run_script(script, out, data_dir, None, None, "--epochs", "1", *extra)
    printed = capsys.readouterr().out
    assert status == 0
    assert "Training completed. Results summary:" in printed

    results = json.loads((out / results_file).read_text())
    assert RUN_FIELDS <= set(results)
    assert results["devices"] == ["cpu"]
    assert {"torch", "torchvision"} <= set(results["versions"])
    assert results["data"]["train_images"] == (130 if extra else 300)
    assert len(results["configs"]) == (1 if extra else len(script.CONFIGS))
    # --amp auto: bf16 on the CPU only for ResNet, and only where the CPU has it in hardware
    bf16 = name == "Resnet_model" and rt.cpu_has_native_bf16()
    assert {entry["precision"] for entry in results["configs"]} == {
        "bf16 autocast" if bf16 else "fp32"}
    for png in ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png"):
        with PIL.Image.open(out / png) as image:  # a real picture, not an empty frame
            assert image.format == "PNG" and min(image.size) > 200
            assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 20

    dataset = data.load_cifar10(data_dir, 130 if extra else None, results["seed"])
    test_counts = torch.bincount(dataset.test_labels, minlength=10).tolist()
    for entry in results["configs"]:
        number = int(entry["id"].split("_")[1])
        assert CONFIG_FIELDS <= set(entry)
        assert entry["config"]["num_epochs"] == 1 and entry["compiled"] is False
        tta = entry["config"].get("tta", False)
        with_tta = {"test_accuracy_without_tta"} if tta else set()
        assert [set(record) for record in entry["history"]] == [EPOCH_FIELDS | with_tta]
        assert entry["weights"] == weights_file(number)
        assert f"final test accuracy {entry['final_test_accuracy']:.2f}%" in printed

        # per-class accuracy and the confusion matrix tell the same story as the accuracy
        matrix = entry["confusion_matrix"]
        assert [sum(row) for row in matrix] == test_counts  # rows: true classes
        assert list(entry["per_class_accuracy"]) == list(data.CLASSES)
        assert list(entry["per_class_accuracy"].values()) == pytest.approx(
            [100 * matrix[label][label] / count for label, count in enumerate(test_counts)])
        assert 100 * sum(matrix[label][label] for label in range(10)) / len(
            dataset.test_labels) == pytest.approx(entry["final_test_accuracy"])

        weights = out / entry["weights"]
        assert reload_and_score(script, entry, weights, dataset, tta) == \
            entry["final_test_accuracy"]
        if tta:
            assert reload_and_score(script, entry, weights, dataset) == \
                entry["history"][-1]["test_accuracy_without_tta"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_importing_a_script_trains_nothing(name, tmp_path):
    code = f"import {name}; print('imported', len({name}.CONFIGS))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported")
    assert list(tmp_path.iterdir()) == []  # no modelset/, no data/


def test_help_lists_the_shared_flags(tmp_path):
    result = run_command("L2_regularization.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--epochs", "--configs", "--subset", "--data-dir", "--out", "--device",
                 "--seed"):
        assert flag in result.stdout
    assert "python L2_regularization.py" in result.stdout  # the docstring's command


def test_baseline_learns_on_generated_data(pickled_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_script("Original_version_model", out, pickled_data, None, None,
                      "--epochs", "10") == 0
    results = json.loads((out / "training_loss.json").read_text())
    assert results["configs"][0]["final_test_accuracy"] > 80  # chance is 10%
    assert "config_1 epoch 10/10" in capsys.readouterr().out


@pytest.mark.usefixtures("rendered")
def test_baseline_prints_and_records_the_loss_every_1000_mini_batches(tmp_path, capsys):
    """The tutorial's log: 4,010 images at batch 4 are 1,003 mini-batches an epoch, so one
    "epoch E: batch 1000 loss: L" line per epoch, and the same numbers in batch_losses."""
    data_dir = write_pickled_batches(tmp_path / "data", train_per_class=401)
    out = tmp_path / "out"
    assert run_script("Original_version_model", out, data_dir, None, None, "--epochs", "2") == 0
    printed = capsys.readouterr().out
    (entry,) = json.loads((out / "training_loss.json").read_text())["configs"]
    assert entry["steps_per_epoch"] == 1003
    logged = entry["batch_losses"]
    assert [(point["epoch"], point["batch"]) for point in logged] == [(1, 1000), (2, 1000)]
    assert re.findall(r"^epoch (\d+): batch (\d+) loss: (\d+\.\d{3})$", printed, re.M) == [
        (str(point["epoch"]), str(point["batch"]), f"{point['loss']:.3f}") for point in logged]
    assert 0 < logged[1]["loss"] < logged[0]["loss"] < 2.5  # it learns, from about ln 10
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_lenet_reaches_35_percent_on_real_images(tmp_path, capsys):
    """The baseline (batch 4, lr 0.001, momentum 0.9), 2 epochs on 10,000 training images."""
    jpeg_dir = shared_jpeg_or_skip()
    out = tmp_path / "out"
    assert run_script("Original_version_model", out, jpeg_dir, None, None, "--subset", "10000",
                      "--epochs", "2") == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "training_loss.json").read_text())
    entry = results["configs"][0]
    assert results["data"]["train_images"] == 10_000
    assert results["data"]["test_images"] == 2_000
    assert entry["final_test_accuracy"] >= 35.0, entry["final_test_accuracy"]
    # 2,500 mini-batches an epoch: the tutorial's running loss at 1000 and 2000, each epoch.
    logged = [(point["epoch"], point["batch"]) for point in entry["batch_losses"]]
    assert logged == [(1, 1000), (1, 2000), (2, 1000), (2, 2000)]
    assert re.search(r"^epoch 2: batch 2000 loss: \d+\.\d{3}$", printed, re.MULTILINE)


# ---- the data: every layout, --subset ----

def test_every_layout_reads_the_images_that_were_written(pickled_data, folder_data,
                                                         archive_data):
    """Batch files, the .tar.gz archive (read as it is, not unpacked) and image folders all
    give the generated images with their labels."""
    def as_set(images, labels):
        return sorted((int(label), image.numpy().tobytes())
                      for image, label in zip(images, labels))

    written = {"train": as_set(*map(torch.from_numpy, make_images(TRAIN_PER_CLASS, seed=1))),
               "test": as_set(*map(torch.from_numpy, make_images(TEST_PER_CLASS, seed=3)))}
    pickled = data.load_cifar10(pickled_data)
    archive = data.load_cifar10(archive_data)
    for dataset in (pickled, archive, data.load_cifar10(folder_data)):
        assert as_set(dataset.train_images, dataset.train_labels) == written["train"]
        assert as_set(dataset.test_images, dataset.test_labels) == written["test"]
    assert torch.equal(archive.train_images, pickled.train_images)  # the same files, in order
    assert torch.equal(archive.train_labels, pickled.train_labels)
    assert archive.source.startswith("archive ")
    assert [path.name for path in archive_data.iterdir()] == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize("layout", ["pickled", "folder"])
def test_subset_is_class_balanced_and_chosen_by_the_seed(layout, request):
    data_dir = request.getfixturevalue(f"{layout}_data")
    everything = {image.numpy().tobytes() for image in data.load_cifar10(data_dir).train_images}
    chosen = data.load_cifar10(data_dir, subset=55, seed=0)
    # 55 of 300 training images: 5 or 6 per class; the test set in proportion, 18 of 100
    assert sorted(torch.bincount(chosen.train_labels, minlength=10).tolist()) == [5] * 5 + [6] * 5
    assert sorted(torch.bincount(chosen.test_labels, minlength=10).tolist()) == [1] * 2 + [2] * 8
    assert {image.numpy().tobytes() for image in chosen.train_images} <= everything
    again = data.load_cifar10(data_dir, subset=55, seed=0)
    assert torch.equal(again.train_images, chosen.train_images)
    other_seed = data.load_cifar10(data_dir, subset=55, seed=1)
    assert not torch.equal(other_seed.train_images, chosen.train_images)


# ---- the flags: --seed, --configs, --epochs, --amp, --compile ----

def test_same_seed_same_result_on_cpu(pickled_data, tmp_path, monkeypatch):
    runs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        # Dropout: dropout draws random numbers
        assert run_script("Dropout_regularization", out, pickled_data, DROPOUT, monkeypatch,
                          "--epochs", "2", "--configs", "2") == 0
        results = json.loads((out / "training_result.json").read_text())
        runs.append((without_timings(results["configs"][0]["history"]),
                     torch.load(out / "config_2.pth", weights_only=True)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][key], runs[1][1][key]) for key in runs[0][1])


def test_a_config_trains_the_same_alone_or_after_another(pickled_data, tmp_path, monkeypatch):
    """Every config starts from the --seed's initial weights (and random numbers), whichever
    configs ran before it: --configs 2 gives config_2 of --configs 1,2, bit for bit."""
    runs = {}
    for selection in ("2", "1,2"):
        out = tmp_path / selection.replace(",", "-")
        # Dropout: dropout draws random numbers
        assert run_script("Dropout_regularization", out, pickled_data, DROPOUT, monkeypatch,
                          "--epochs", "1", "--configs", selection) == 0
        entries = json.loads((out / "training_result.json").read_text())["configs"]
        assert [entry["id"] for entry in entries][-1] == "config_2"
        runs[selection] = (without_timings(entries[-1]["history"]),
                           torch.load(out / "config_2.pth", weights_only=True))
    alone, after = runs["2"], runs["1,2"]
    assert alone[0] == after[0]
    assert all(torch.equal(alone[1][key], after[1][key]) for key in alone[1])


def test_configs_and_epochs_flags_pick_and_override(pickled_data, tmp_path, capsys,
                                                    monkeypatch):
    out = tmp_path / "out"
    assert run_script("Original_version_model_multiGPU", out, pickled_data,
                      [TINY, dict(TINY, lr=0.02), dict(TINY, lr=0.005)], monkeypatch,
                      "--configs", "3,1", "--epochs", "2") == 0
    printed = capsys.readouterr().out
    assert printed.index("config_3 epoch 2/2") < printed.index("config_1 epoch 1/2")
    results = json.loads((out / "training_result.json").read_text())
    assert [entry["id"] for entry in results["configs"]] == ["config_1", "config_3"]
    assert all(len(entry["history"]) == 2 for entry in results["configs"])
    assert sorted(path.name for path in out.glob("*.pth")) == ["config_1.pth", "config_3.pth"]


def test_resnet_recipe_keys_run_on_the_cpu_and_amp_off_records_fp32(pickled_data, tmp_path,
                                                                  monkeypatch):
    """ResNet's recipe with a batch that fits the tiny generated set, with --amp off on a CPU
    where --amp auto would choose bf16: it trains in fp32 and says so, the results record
    its augmentation and schedule, and its weights rescore (with TTA, as the recipe tests)
    to the recorded accuracy in fp32."""
    script = importlib.import_module("Resnet_model")
    recipe = dict(next(config for config in script.CONFIGS if config.get("name") == "recipe"),
                  batch_size=64, num_epochs=1)
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: True)
    out = tmp_path / "out"
    assert run_script(script, out, pickled_data, [recipe], monkeypatch, "--subset", "130",
                      "--amp", "off") == 0
    (entry,) = json.loads((out / "Resnet_model_result.json").read_text())["configs"]
    assert entry["status"] == "finished" and entry["precision"] == "fp32"
    for key in ("augment", "schedule", "peak_at", "label_smoothing", "tta"):
        assert entry["config"][key] == recipe[key], key
    dataset = data.load_cifar10(pickled_data, 130, 0)
    assert reload_and_score(script, entry, out / entry["weights"], dataset, tta=True) == \
        entry["final_test_accuracy"]


def test_amp_auto_uses_bf16_on_the_cpu_only_where_the_script_and_the_cpu_allow(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: native)
        assert rt.init_runtime("cpu", amp="auto", cpu_amp=True).amp_dtype == (
            torch.bfloat16 if native else None)
        assert rt.init_runtime("cpu", amp="auto", cpu_amp=False).amp_dtype is None
        assert rt.init_runtime("cpu", amp="off", cpu_amp=True).amp_dtype is None
        assert rt.init_runtime("cpu", amp="on").amp_dtype == torch.bfloat16


def test_compile_runs_on_the_cpu_saves_plain_weights_and_says_so(pickled_data, tmp_path,
                                                                 monkeypatch):
    script = importlib.import_module("Original_version_model_multiGPU")
    out = tmp_path / "out"
    assert run_script(script, out, pickled_data, [dict(TINY, batch_size=32)], monkeypatch,
                      "--compile") == 0
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    assert entry["compiled"] is True
    weights = torch.load(out / "config_1.pth", weights_only=True)
    assert not any(key.startswith(("_orig_mod.", "module.")) for key in weights)
    assert reload_and_score(script, entry, out / "config_1.pth",
                            data.load_cifar10(pickled_data)) == entry["final_test_accuracy"]


# ---- the recipes: one-cycle and peak_at, TTA, the test pass ----

def test_lenet_recipe_records_accuracy_with_and_without_tta(pickled_data, tmp_path):
    script = importlib.import_module("Original_version_model_multiGPU")
    out = tmp_path / "out"
    assert run_script(script, out, pickled_data, None, None, "--configs", "recipe",
                      "--epochs", "3") == 0
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    names = [config.get("name") for config in script.CONFIGS]
    assert entry["config"]["name"] == "recipe"
    assert entry["id"] == f"config_{names.index('recipe') + 1}"
    history = entry["history"]
    assert all("test_accuracy_without_tta" in record for record in history)
    # one-cycle: below the peak after the first epoch, zero at the very end
    assert 0 < history[0]["lr"] < entry["config"]["lr"]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_lenet_speedrun_runs_as_written(pickled_data, tmp_path):
    """The speedrun config as it stands in the script (its own epochs), on the tiny generated
    set: it trains to the end of its schedule and leaves its results and PNGs. Its accuracy
    on CIFAR-10 is measured by the benchmark in benchmarks/RESULTS.md, not here."""
    script = importlib.import_module("Original_version_model_multiGPU")
    out = tmp_path / "out"
    assert run_script(script, out, pickled_data, None, None, "--configs", "speedrun") == 0
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    (speedrun,) = [config for config in script.CONFIGS if config.get("name") == "speedrun"]
    assert entry["status"] == "finished" and entry["config"] == speedrun
    assert len(entry["history"]) == speedrun["num_epochs"]
    assert entry["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert "test_accuracy_without_tta" in entry["history"][-1]
    assert (out / "test_accuracy.png").stat().st_size > 0


def test_a_finished_config_passes_over_the_test_set_once_an_epoch(pickled_data, tmp_path,
                                                                   monkeypatch):
    """The confusion matrix and the example grid of a finished config use the predictions of
    its last epoch's test pass: no extra pass over the test set after training (on a CPU a
    ResNet-18 test pass with TTA takes a minute). They stay those of the final weights: the
    per-class scores agree with the final test accuracy."""
    script = importlib.import_module("Original_version_model_multiGPU")
    passes, real_predict, real_measure = [], train.predict, train.measure

    def counted(name, real):
        return lambda *args, **kwargs: passes.append(name) or real(*args, **kwargs)

    monkeypatch.setattr(train, "predict", counted("predict", real_predict))
    monkeypatch.setattr(train, "measure", counted("measure", real_measure))
    out = tmp_path / "out"
    assert run_script(script, out, pickled_data, None, None, "--configs", "recipe",
                      "--epochs", "2") == 0
    # the epochs' own passes (each over the test set and a training sample) gave every prediction
    assert passes == ["measure", "predict", "predict"] * 2
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    matrix = torch.tensor(entry["confusion_matrix"])
    assert 100 * matrix.diagonal().sum().item() / matrix.sum().item() == pytest.approx(
        entry["final_test_accuracy"])


def test_onecycle_warms_up_then_decays_to_zero():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = train.make_scheduler(optimizer, {"schedule": "onecycle", "num_epochs": 10}, 10)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(1.0) and peak == 19  # 20% of 100 steps
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def lrs(config_dict, steps):
    """The lr of every training step of ``config_dict`` (num_epochs x steps), as the engine
    sets it, and the lr after the last step."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config_dict["lr"])
    scheduler = train.make_scheduler(optimizer, config_dict, steps)
    seen = []
    for _ in range(config_dict["num_epochs"] * steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen, optimizer.param_groups[0]["lr"]


def test_peak_at_places_the_peak_of_the_one_cycle_schedule():
    onecycle = {"schedule": "onecycle", "lr": 0.4, "num_epochs": 4, "batch_size": 512}
    seen, after = lrs(dict(onecycle, peak_at=0.25), steps=25)  # 100 steps, peak at step 24
    warmup, total = 25, 100
    for step in (0, 10, 24, 25, 60, 99):
        expected = (0.4 * (step + 1) / warmup if step < warmup
                    else 0.4 * (total - step) / (total - warmup + 1))
        assert seen[step] == pytest.approx(expected, rel=1e-12), step
    assert seen.index(max(seen)) == 24 and max(seen) == pytest.approx(0.4)
    assert after == pytest.approx(0.0, abs=1e-12)
    # a fraction of all steps: --epochs 8 moves the peak with the length of the run
    seen, _ = lrs(dict(onecycle, peak_at=0.25, num_epochs=8), steps=25)
    assert seen.index(max(seen)) == 49


def test_a_config_without_peak_at_keeps_the_old_schedule_bit_for_bit():
    onecycle = {"schedule": "onecycle", "lr": 0.05, "num_epochs": 3, "batch_size": 128}
    total, steps = 3 * 391, 391  # 50,000 images at batch 128; 20% of the steps is 234.6
    warmup = max(1, int(0.2 * total))  # the schedule as it was before peak_at
    old = [0.05 * ((step + 1) / warmup if step < warmup
                   else max(0.0, (total - step) / (total - warmup + 1))) for step in range(total)]
    seen, _ = lrs(onecycle, steps)
    assert seen == old  # exactly, not approximately
    assert lrs(dict(onecycle, peak_at=0.2), steps)[0] == old


class LeftAgainstRight(nn.Module):
    """Not mirror-symmetric: class 0 scores the left half's brightness, class 1 the right
    half's plus 0.5. An image bright on the left is class 0 to it; add the mirror image's
    logits (flip TTA) and class 1 wins."""

    def forward(self, images):
        left = images[..., :16].mean(dim=(1, 2, 3))
        right = images[..., 16:].mean(dim=(1, 2, 3))
        others = torch.full((len(images), 8), -100.0)
        return torch.cat([left[:, None], right[:, None] + 0.5, others], dim=1)


def test_tta_adds_the_mirror_images_logits():
    images = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    images[:3, :, :, :16] = 255  # bright left half
    images[3:, :, :, 16:] = 255  # bright right half
    scale, shift = data.normalizer(*data.TUTORIAL_NORMALIZATION, device="cpu")  # to -1..1
    cpu = rt.Runtime(torch.device("cpu"))
    model = LeftAgainstRight()
    plain = train.predict(model, images, scale, shift, cpu, tta=False)
    mirrored = train.predict(model, images, scale, shift, cpu, tta=True)
    assert plain.tolist() == [0, 0, 0, 1, 1, 1]
    assert mirrored.tolist() == [1, 1, 1, 1, 1, 1]
    inputs = images.float() * scale + shift
    assert torch.equal(mirrored, (model(inputs) + model(inputs.flip(3))).argmax(dim=1))


# ---- a training step against plain reference code, in fp32 and bf16 ----

def one_engine_step(model, images, labels, config, runtime):
    """The loss of one step of the kit's loop (train.fit) on the whole of ``images``, model
    placed (and laid out channels_last) by the engine as the scripts do."""
    model = rt.place_model(model, runtime)
    scale, shift = data.normalizer(*data.TUTORIAL_NORMALIZATION, device="cpu")
    on_cpu = data.OnDevice(images, labels, images, labels, scale, shift)
    chosen = dict(config, num_epochs=1, batch_size=len(labels))
    history = train.fit(model, chosen, on_cpu, runtime).progress["history"]
    return torch.tensor(history[0]["train_loss"])


def test_one_step_matches_a_plain_reference_implementation():
    torch.manual_seed(2)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (32,))
    config = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
              "label_smoothing": 0.1}
    model = build_model({})
    reference = copy.deepcopy(model)
    ours_loss = one_engine_step(model, images, labels, config, rt.Runtime(torch.device("cpu")))

    inputs = (images.float() / 255 - 0.5) / 0.5
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9,
                                          weight_decay=5e-4, nesterov=True)
    loss = F.cross_entropy(reference(inputs), labels, label_smoothing=0.1)
    reference_optimizer.zero_grad()
    loss.backward()
    reference_optimizer.step()

    torch.testing.assert_close(ours_loss, loss.detach(), rtol=1e-5, atol=1e-6,
                               check_dtype=False)  # the epoch sums are float64
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_step_stays_close_to_fp32():
    torch.manual_seed(3)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (32,))
    config = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    model = build_model({})
    twin = copy.deepcopy(model)
    fp32 = one_engine_step(model, images, labels, config, rt.Runtime(torch.device("cpu")))
    bf16 = one_engine_step(twin, images, labels, config,
                           rt.Runtime(torch.device("cpu"), amp_dtype=torch.bfloat16))
    # the loss is taken in fp32 from the bf16 logits, not rounded to bf16 itself
    assert bf16.to(torch.bfloat16).double() != bf16
    assert not torch.equal(bf16, fp32)  # bf16 did run...
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0)  # ...and stayed close
    for ours, theirs in zip(twin.parameters(), model.parameters()):
        assert ours.dtype == torch.float32  # autocast: the weights stay fp32
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-3)


# ---- augmentation: crops, flips and cutout keep each image with its label ----

@pytest.mark.parametrize("augment", data.AUGMENTATIONS)
def test_augmentation_keeps_labels_with_their_images(augment):
    images, labels = labelled_images(64)
    identity = (torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1))  # raw pixel values out
    torch.manual_seed(0)
    order = torch.randperm(len(labels))
    batch, batch_labels = data.prepare_batch(images, labels, order, *identity, augment=augment)
    assert torch.equal(batch_labels, labels[order])
    for image, label in zip(batch, batch_labels):
        values = set(image.unique().tolist())
        assert values <= {0.0, float(label * 20 + 20)}  # its own pixels, padding, cutout
        assert (image == label * 20 + 20).float().mean() > 0.5
        blanked = (image == 0).sum().item()
        if augment.startswith("reflect-"):  # a mirrored border: no padding zeros
            # inside-cutout: exactly one whole 8x8 square in each of the 3 channels
            assert blanked == (3 * 8 * 8 if augment.endswith("inside-cutout") else 0)
        elif augment in ("none", "flip"):
            assert blanked == 0


def test_crop_is_a_window_of_the_padded_image_and_flip_a_mirror():
    torch.manual_seed(1)
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    padded = F.pad(batch, (4, 4, 4, 4))
    cropped = data.random_crop(batch)
    for original, image in zip(padded, cropped):
        windows = [(top, left) for top in range(9) for left in range(9)
                   if torch.equal(original[:, top:top + 32, left:left + 32], image)]
        assert len(windows) >= 1
    flipped = data.random_flip(batch)
    assert all(torch.equal(out, image) or torch.equal(out, image.flip(2))
               for out, image in zip(flipped, batch))
    assert not all(torch.equal(out, image) for out, image in zip(flipped, batch))


def test_reflect_crop_is_a_window_of_the_reflect_padded_image():
    """Each image equals torchvision's pad(reflect) then crop at one offset, and every offset
    from 0 to 8 occurs: a zero-padded crop, a shift without padding or a mirrored edge that
    repeats the border pixel would each fail here."""
    torch.manual_seed(4)
    batch = torch.randint(1, 256, (300, 3, 32, 32), dtype=torch.uint8)  # no zero pixels
    cropped = data.random_crop(batch, border="reflect")
    assert cropped.dtype == torch.uint8 and cropped.shape == batch.shape
    offsets = []
    for original, image in zip(batch, cropped):
        reference = TF.pad(original, [4], padding_mode="reflect")  # torchvision's, per image
        found = windows_found(reference, image)
        assert len(found) == 1, found  # random pixels: one window, and it is exact
        offsets += found
    assert {top for top, _ in offsets} == set(range(9))
    assert {left for _, left in offsets} == set(range(9))
    assert (cropped > 0).all()  # nothing was filled with zeros


def test_zero_padded_crop_is_unchanged_by_the_new_option():
    torch.manual_seed(5)
    batch = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(6)
    default = data.random_crop(batch)
    torch.manual_seed(6)
    zeros = data.random_crop(batch, border="zeros")
    assert torch.equal(default, zeros)
    padded = torch.nn.functional.pad(batch, (4,) * 4)
    assert all(len(windows_found(original, image)) >= 1 for original, image in zip(padded, default))


def test_inside_cutout_blanks_a_whole_8x8_square_inside_every_image():
    torch.manual_seed(7)
    batch = torch.ones(400, 3, 32, 32)
    boxes = blanked_squares(data.cutout(batch, placement="inside"))
    assert {(height, width) for _, _, height, width in boxes} == {(8, 8)}
    # every position the square can take inside the image, the edges included
    assert {top for top, _, _, _ in boxes} == set(range(25))
    assert {left for _, left, _, _ in boxes} == set(range(25))


def test_overhanging_cutout_still_hangs_over_the_edge():
    torch.manual_seed(8)
    boxes = blanked_squares(data.cutout(torch.ones(400, 3, 32, 32)))
    assert any((height, width) != (8, 8) for _, _, height, width in boxes)


# ---- what a run prints and draws ----

def test_short_epochs_get_an_estimate_and_lines_name_the_config(pickled_data, tmp_path,
                                                                monkeypatch, capsys):
    # 300 images at batch 32: 10 steps an epoch, fewer than the 40 the estimate used to wait
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, [A], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: about" in printed and "an epoch on this CPU" in printed
    assert "config_1 a: num_epochs=1" in printed  # the name, as the summary shows it
    assert "; fp32; output" in printed  # the precision in the run's header
    saved = json.loads((tmp_path / "out" / RESULTS).read_text())
    assert results.config_label(saved["configs"][0]).startswith("config_1 a:")


@pytest.mark.parametrize("window", [0.0, 1e9])
def test_an_estimate_comes_before_the_long_wait(window, pickled_data, tmp_path, monkeypatch,
                                                capsys):
    """Timed over 40 steps and ESTIMATE_SECONDS: inside the first epoch when it lasts longer
    (75 steps here, the window shrunk to nothing), else from the whole first epoch."""
    monkeypatch.setattr(train, "ESTIMATE_SECONDS", window)
    configs = [dict(A, batch_size=4, num_epochs=2), dict(B, batch_size=4, num_epochs=3)]
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, configs,
                      monkeypatch) == 0
    printed = capsys.readouterr().out
    (line,) = [line for line in printed.splitlines() if "an epoch on this CPU" in line]
    assert line.startswith("config_1: about ")
    assert "the 2 run(s) to train need about " in line
    if window:
        assert printed.index("config_1 epoch 1/2") < printed.index(line)
    else:
        assert printed.index(line) < printed.index("config_1 epoch 1/2")


def test_examples_png_follows_its_config_when_configs_are_removed(pickled_data, tmp_path,
                                                                  monkeypatch):
    titles = []
    real_figure = plots.examples_figure
    monkeypatch.setattr(plots, "examples_figure", lambda *args: titles.append(args[-1])
                        or real_figure(*args))
    hopeless = dict(A, name="hopeless", lr=1e-7)  # stays near chance: config_2 is the best
    learns = dict(B, lr=0.05)  # 17% after its one epoch (lr 0.02: 10%, a tie)
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [hopeless, learns], monkeypatch) == 0
    assert titles[-1].startswith("L2_regularization, config_2 b:")
    # config_1 removed: b is config_1
    assert run_script("L2_regularization", out, pickled_data, [learns], monkeypatch) == 0
    assert titles[-1].startswith("L2_regularization, config_1 b:")


def history_entry(config, accuracies):
    return {"id": "config_1", "seed": 0, "config": config, "history": [
        {"epoch": epoch, "train_loss": 1.0, "train_accuracy": value, "test_accuracy": value,
         "train_accuracy_eval": value} for epoch, value in enumerate(accuracies, 1)]}


@pytest.mark.parametrize("dropout, said", [(None, False), (0.0, False), (0.5, True)])
def test_the_running_accuracy_says_dropout_only_where_there_is_dropout(dropout, said):
    config = dict(A) if dropout is None else dict(A, dropout=dropout)
    figure = plots.history_figure([history_entry(config, [40.0, 50.0])], "train_accuracy_eval",
                                  "t", "y", 5.0)
    legend = " ".join(text.get_text() for text in figure.axes[0].get_legend().get_texts())
    assert ("dropout on" in legend) == said


def test_a_one_epoch_run_is_a_point_with_its_value():
    figure = plots.history_figure([history_entry(dict(A), [37.5])], "train_accuracy_eval", "t",
                                  "y", 5.0)
    axes = figure.axes[0]
    assert [text.get_text() for text in axes.texts] == ["37.5"]
    assert all(line.get_marker() not in ("", "None") for line in axes.lines
               if len(line.get_xdata()) == 1)


def test_confusion_rows_add_up_to_100():
    counts = np.array([[1, 1, 1], [2, 2, 3], [0, 0, 5]])
    percent = 100 * counts / counts.sum(axis=1, keepdims=True)
    assert np.round(percent).sum(axis=1).tolist() != [100, 100, 100]  # 99: the fault
    assert plots.rounded_rows(percent).sum(axis=1).tolist() == [100, 100, 100]


def test_subtitles_name_the_data_folder_not_its_whole_path():
    run_fields = {"data": {"train_images": 300, "test_images": 100,
                           "source": "image folders in /home/me/data/cifar10-jpeg (subset)"},
                  "devices": ["cpu"]}
    assert plots.subtitle(run_fields, []).endswith("image folders in cifar10-jpeg (subset)")


# ---- where the files go: modes, one folder shared by scripts and by processes ----

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_output_files_follow_the_umask(umask, mode, tmp_path):
    previous = os.umask(umask)
    try:
        save_json({"a": 1}, tmp_path / "results.json")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == mode
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]  # no temp left


def test_another_script_into_the_same_folder_keeps_the_first_ones_results(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [SMALL], monkeypatch) == 0
    l2 = {name: (out / name).read_bytes() for name in ("training_result.json", "config_1.pth")}
    before = finished_runs(out)
    assert run_script("Original_version_model", out, pickled_data, None, None,
                      "--epochs", "1") == 0
    assert all((out / name).read_bytes() == content for name, content in l2.items())
    after = finished_runs(out)
    assert len(after) == 2 and {name: after[name] for name in before} == before
    baseline = (out / "model.pth").read_bytes()
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [SMALL], monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert (out / "model.pth").read_bytes() == baseline  # not a view of L2's to tidy away


def test_a_symlinked_runs_folder_is_kept(pickled_data, tmp_path, monkeypatch):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    (out / "runs").symlink_to(scratch)
    assert run_script("L2_regularization", out, pickled_data, [SMALL, dict(SMALL, lr=0.02)],
                      monkeypatch) == 0
    assert (out / "runs").is_symlink() and len(list(scratch.glob("*/weights.pth"))) == 2
    assert (out / "config_2.pth").exists()


def launch(data_dir, out, *flags, torchrun=False, epochs=2):
    """The L2 script (its own CONFIGS) started in a process of its own, or under torchrun."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2"] if torchrun else [sys.executable]
    return subprocess.Popen([*launcher, "L2_regularization.py", "--data-dir", str(data_dir),
                             "--out", str(out), "--device", "cpu", "--epochs", str(epochs),
                             *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_runs_into_one_folder_at_once_both_land(pickled_data, tmp_path):
    """A torchrun job (its rank 0 writes) and a plain process, into one folder at once: two
    writers, as two plain processes are (the store does not tell them apart)."""
    out = tmp_path / "out"
    first = launch(pickled_data, out, "--configs", "1", torchrun=True)
    second = launch(pickled_data, out, "--configs", "2")
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    results = json.loads((out / RESULTS).read_text())
    assert [(entry["id"], entry["status"]) for entry in results["configs"]] == \
        [("config_1", "finished"), ("config_2", "finished")]
    assert (out / "config_1.pth").is_file() and (out / "config_2.pth").is_file()
    assert len(finished_runs(out)) == 2


def test_a_second_run_of_the_same_config_waits_for_the_first(pickled_data, tmp_path):
    out = tmp_path / "out"
    first = launch(pickled_data, out, "--configs", "1", epochs=40)
    for _ in range(600):  # until the first has claimed its run
        if list(out.glob("runs/*/run.json")):
            break
        time.sleep(0.05)
    second = launch(pickled_data, out, "--configs", "1", epochs=40)
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert "another process is training it right now" in outputs[1] \
        and "config_1: already finished" in outputs[1], outputs[1]
    assert len(finished_runs(out)) == 1


# ---- Task 2's strength curve in REPORT.md: a figure and a sentence from 3 strengths ----

STRENGTH_BASE = {"num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 16}
L2_SWEEP = [dict(STRENGTH_BASE, weight_decay=strength) for strength in (0.0, 1e-3, 1e-1)]
DROPOUT_PAIR = [dict(STRENGTH_BASE, dropout=strength) for strength in (0.0, 0.5)]


@pytest.fixture(scope="module")
def modelset(tmp_path_factory, pickled_data):
    """An L2 sweep of three strengths, two seeds each; a dropout folder of two strengths."""
    root = tmp_path_factory.mktemp("strength") / "modelset"
    with contextlib.redirect_stdout(io.StringIO()):
        with pytest.MonkeyPatch.context() as patch:  # the runs' own PNGs built, not rendered
            patch.setattr(plots, "png_bytes", unrendered_png)
            for name, configs, folder in (
                    ("L2_regularization", L2_SWEEP, "L2_regularization_model"),
                    ("Dropout_regularization", DROPOUT_PAIR, "Dropout_regularization_model")):
                assert run_script(name, root / folder, pickled_data, configs, patch,
                                  "--seeds", "2") == 0
        assert make_report.main(["--modelset", str(root)]) == 0  # the report's, rendered
    return root


def spread(values):
    return np.mean(values), np.std(values, ddof=1)


def test_a_sweep_of_three_strengths_gets_its_figure_and_a_sentence_from_its_numbers(modelset):
    figure = modelset / "figures" / "task2_strength_L2_regularization_model.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (modelset / "REPORT.md").read_text()
    assert "(figures/task2_strength_L2_regularization_model.png)" in text

    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    by_strength = {}
    for entry in results["configs"]:
        gap = entry["history"][-1]["train_accuracy_eval"] - entry["final_test_accuracy"]
        by_strength.setdefault(entry["config"]["weight_decay"], []).append(
            (gap, entry["final_test_accuracy"]))
    control_gap, control_std = spread([gap for gap, _ in by_strength[0.0]])
    (sentence,) = [line for line in text.splitlines() if "L2_regularization.py (" in line
                   and "seeds' spread" in line]
    assert f"{control_gap:.2f} ± {control_std:.2f}" in sentence
    found = re.search(r"spread is ([0-9.e-]+) \(", sentence)
    if found:  # the strength named is the first whose gap is below the control's by more
        strength = float(found.group(1))
        gap, std = spread([gap for gap, _ in by_strength[strength]])
        test = np.mean([test for _, test in by_strength[strength]])
        assert control_gap - gap > max(control_std, std)
        assert f"({gap:.2f} ± {std:.2f} against" in sentence and f"{test:.2f}%" in sentence
    else:
        assert "no weight decay up to 0.1 makes the gap smaller" in sentence


def test_two_strengths_get_no_strength_figure(modelset):
    assert not (modelset / "figures" / "task2_strength_Dropout_regularization_model.png").exists()
    assert "dropout probability against" not in (modelset / "REPORT.md").read_text()


def test_an_estimate_taken_in_a_slow_start_is_corrected_once(pickled_data, tmp_path,
                                                             monkeypatch, capsys):
    """The first epoch's steps are slow (a busy machine, say), the later ones fast: the run
    says the corrected time once, after the second epoch; and a loaded machine is named."""
    script = importlib.import_module("L2_regularization")
    real_build, calls = script.build_model, []

    def build_model(config):  # a model that fails to be fast: 20 ms a step in epoch 1
        model = real_build(config)

        def slow_start(module, inputs):
            calls.append(1)
            time.sleep(0.02 if module.training and len(calls) < 80 else 0)

        model.register_forward_pre_hook(slow_start)
        return model

    monkeypatch.setattr(script, "build_model", build_model)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.5, 9.0, 8.0))
    assert run_script(script, tmp_path / "out", pickled_data,
                      [dict(TINY, batch_size=4, num_epochs=4)], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "This machine is busy with other work (load 9.5 on" in printed
    (line,) = [line for line in printed.splitlines() if "as estimated" in line]
    assert line.startswith("config_1: an epoch takes about ")
    assert printed.index("config_1 epoch 2/4") < printed.index(line) < printed.index(
        "config_1 epoch 3/4")


def test_a_quoted_tilde_in_out_means_the_home_folder(pickled_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert run_script("L2_regularization", "~/results", pickled_data, [TINY], monkeypatch) == 0
    assert (tmp_path / "home" / "results" / "config_1.pth").exists()
    assert not (tmp_path / "~").exists()


def test_a_last_batch_of_one_image_is_dropped_so_batchnorm1d_trains(pickled_data, tmp_path,
                                                                   monkeypatch):
    """300 images at batch 13: a last batch of one image, which BatchNorm1d cannot train on
    ("Expected more than 1 value per channel")."""
    script = importlib.import_module("Original_version_model_multiGPU")
    monkeypatch.setattr(script, "build_model", lambda config: nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 10)))
    out = tmp_path / "out"
    assert run_script(script, out, pickled_data, [dict(TINY, batch_size=13)], monkeypatch) == 0
    assert json.loads((out / "training_result.json").read_text())["configs"][0]["status"] == \
        "finished"


def test_the_estimate_counts_what_is_left_to_train(pickled_data, tmp_path, monkeypatch,
                                                   capsys):
    """A run resumed after its first of two epochs is told of one epoch, not two; a finished
    run whose weights were deleted (it trains again) is counted."""
    out, configs = tmp_path / "out", [dict(TINY, batch_size=4, num_epochs=2)]
    monkeypatch.setattr(train, "ESTIMATE_SECONDS", 1e9)  # the estimate at the epoch's end
    real_measure = train.measure
    monkeypatch.setattr(train, "measure", lambda *args: (
        os.kill(os.getpid(), signal.SIGINT), real_measure(*args))[1])
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 130
    monkeypatch.setattr(train, "measure", real_measure)
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "an epoch on" in line]
    epoch, left = re.search(r"about (.+) an epoch on .*; the 1 run\(s\) to train need about "
                            r"(.+) in all", line).groups()
    assert epoch == left, line
    for weights in out.glob("runs/*/weights.pth"):
        weights.unlink()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert "the 1 run(s) to train" in capsys.readouterr().out


def test_an_estimate_after_a_resume_mid_epoch_is_of_a_whole_epoch(monkeypatch):
    """Resumed at step 90 of 100, a step a second: the epoch's end has timed 10 steps, and
    tells of 100 s an epoch (10 s was a tenth of one)."""
    clock, said = [0.0], []
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    job = types.SimpleNamespace(
        runtime=rt.Runtime(torch.device("cpu")), epochs_to_train=(1, 2), argv=["--subset", "1"],
        say=said.append, on_device=types.SimpleNamespace(train_labels=range(1000),
                                                         test_labels=range(100)))
    training = types.SimpleNamespace(name="config_1", steps_per_epoch=100, config={
        "batch_size": 10}, progress={"epoch": 0, "step": 90})
    estimate = train.Estimate(job, training)
    for _ in range(10):
        clock[0] += 1.0
        estimate.step()
    estimate.epoch_end()
    assert said and said[0].startswith("config_1: about 100 s an epoch on this CPU"), said


TURNS_DRIVER = """
import json, os, sys, time
from cifarkit import runtime as rt
turns = rt.CpuTurns(print, folder=sys.argv[1])
started, intervals = time.monotonic(), []
while time.monotonic() - started < float(sys.argv[2]):
    turns.take()
    begun = time.monotonic()
    while time.monotonic() - begun < 0.02:  # a step's work
        pass
    intervals.append((begun, time.monotonic()))
    if len(sys.argv) > 3:  # hold the turn and wait to be stopped
        print("holding", flush=True)
        time.sleep(600)
turns.end()
turns.close()
print(json.dumps(intervals))
"""


def test_runs_on_one_cpu_take_turns_at_it_and_a_stopped_one_holds_the_others_up_briefly(
        tmp_path):
    """Two runs training on one CPU with torch's default threads compute in turns, never at
    once (side by side, their threads fought over 2 cores: each 4 to 60 times slower than
    alone), both going forward turn by turn; each says so in one line. A run stopped in its
    turn (Ctrl-Z) does not hold the others up; a turn file deleted under the runs is replaced."""
    def start(seconds, *hold):
        return subprocess.Popen([sys.executable, "-c", TURNS_DRIVER, str(tmp_path), str(seconds),
                                 *hold], cwd=REPO, stdout=subprocess.PIPE, text=True)

    def overlapping(runs):
        steps = sorted((begun, ended, run) for run, intervals in enumerate(runs)
                       for begun, ended in intervals)
        return [pair for pair in zip(steps, steps[1:]) if pair[0][1] > pair[1][0]], steps

    first, second = start(1.2), start(1.2)
    outputs = [process.communicate(timeout=60)[0].splitlines() for process in (first, second)]
    for lines in outputs:
        (said,) = lines[:-1]
        assert re.fullmatch(re.escape(rt.TURNS_LINE).replace(r"\{\}", r"\d+"), said)
    overlaps, steps = overlapping([json.loads(lines[-1]) for lines in outputs])
    assert not overlaps
    assert sum(a[2] != b[2] for a, b in zip(steps, steps[1:])) >= 3  # turns, not one by one

    holder = start(60, "hold")
    assert holder.stdout.readline() == "holding\n"
    holder.send_signal(signal.SIGSTOP)
    looking = open(tmp_path / f"cifarkit-cpu-{os.getuid()}" / "waiting")
    fcntl.flock(looking, fcntl.LOCK_EX)  # as if stopped while it looked for waiting runs
    try:
        begun = time.monotonic()
        lines = start(0.3).communicate(timeout=30)[0].splitlines()
        assert time.monotonic() - begun < 15
        assert lines[0] == rt.STOPPED.format(holder.pid)
    finally:
        looking.close()
        holder.kill()
        holder.wait()

    holder = rt.CpuTurns(print, folder=tmp_path)
    holder.take()
    (tmp_path / f"cifarkit-cpu-{os.getuid()}" / "turn").unlink()  # by a tmp cleaner
    other, mine = start(1.0), []
    while other.poll() is None:
        holder.take()
        begun = time.monotonic()
        while time.monotonic() - begun < 0.02:
            pass
        mine.append((begun, time.monotonic()))
    holder.end()
    holder.close()
    theirs = json.loads(other.communicate(timeout=60)[0].splitlines()[-1])
    later = [step for step in mine if step[0] > theirs[0][0] + 2 * rt.TURN_SECONDS]
    assert later and not overlapping([later, theirs])[0]  # one turn later, turns again


def test_only_runs_at_torchs_default_threads_in_this_users_own_folder_take_turns(
        tmp_path, monkeypatch):
    """Threads set by hand (OMP_NUM_THREADS, as torchrun does) size runs to share the cores
    themselves; a turns folder another user could write into could stall or hang a run; a
    folder deleted mid-run (a tmp cleaner) leaves the run to go on without turns."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(rt.tempfile, "gettempdir", lambda: str(tmp_path))
    runtime, said = rt.Runtime(torch.device("cpu")), []
    rt.share_cpu(runtime, said.append)
    assert runtime.turns is not None
    rt.take_turn(runtime)
    folder = tmp_path / f"cifarkit-cpu-{os.getuid()}"
    shutil.rmtree(folder)
    time.sleep(rt.TURN_SECONDS)
    rt.take_turn(runtime)
    assert runtime.turns is None and said == [rt.TURNS_OFF.format(
        f"[Errno 2] No such file or directory: '{folder / 'turn'}'")]

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    rt.share_cpu(runtime, print)
    assert runtime.turns is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # another user could have made it so, and put a FIFO or lock there
    rt.share_cpu(runtime, said.append)
    assert runtime.turns is None and said[-1] == rt.TURNS_OFF.format(
        f"{folder} is not this user's own folder")
