"""The five report scripts, end to end on generated data, as a user runs them."""
import importlib
import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from cifarkit import data, train
from cifarkit import runtime as rt
from conftest import (REPO, TEST_PER_CLASS, TRAIN_PER_CLASS, make_images, run_command,
                      run_script,
                      write_pickled_batches)

CPU = ["--device", "cpu"]  # what these tests expect (fp32 LeNet, bit-identical reruns)
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
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

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


def test_baseline_learns_on_generated_data(pickled_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_script("Original_version_model", out, pickled_data, None, None,
                      "--epochs", "10") == 0
    results = json.loads((out / "training_loss.json").read_text())
    assert results["configs"][0]["final_test_accuracy"] > 80  # chance is 10%
    assert "config_1 epoch 10/10" in capsys.readouterr().out


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


# Small configs of the engine's own, so that an edit of a script's CONFIGS breaks no test
TINY = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 8}
DROPOUT = [dict(TINY, dropout=0.0), dict(TINY, dropout=0.5)]


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


@pytest.mark.parametrize("name", SCRIPTS)
def test_importing_a_script_trains_nothing(name, tmp_path):
    code = f"import {name}; print('imported', len({name}.CONFIGS))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported")
    assert list(tmp_path.iterdir()) == []  # no modelset/, no data/


@pytest.mark.parametrize("case", ["missing", "empty", "no-network"])
def test_no_data_is_one_clear_message(case, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"missing": ["--data-dir", str(tmp_path / "nowhere")],
            "empty": ["--data-dir", str(empty)], "no-network": []}[case]
    result = run_command("Resnet_model.py", *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "--data-dir" in result.stderr and "cifar-10-python.tar.gz" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_the_shared_flags(tmp_path):
    result = run_command("L2_regularization.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--epochs", "--configs", "--subset", "--data-dir", "--out", "--device",
                 "--seed"):
        assert flag in result.stdout
    assert "python L2_regularization.py" in result.stdout  # the docstring's command


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
