"""The five report scripts, end to end on generated data, as a user runs them."""
import importlib
import json
import subprocess
import sys

import pytest
import torch

from cifarkit import data, train
from cifarkit import runtime as rt
from conftest import REPO

# module, results JSON, weights file of config N, extra argv (ResNet is slow on the CPU)
SCRIPTS = {
    "Original_version_model": ("training_loss.json", lambda number: "model.pth", []),
    "Original_version_model_multiGPU": ("training_result.json", "config_{}.pth".format, []),
    "L2_regularization": ("training_result.json", "config_{}.pth".format, []),
    "Dropout_regularization": ("training_result.json", "config_{}.pth".format, []),
    # ResNet's recipe (batch 512) does not fit a 130-image subset: test_resnet_recipe_keys
    "Resnet_model": ("Resnet_model_result.json", "config_{}.pth".format,
                     ["--subset", "130", "--configs", "1,2,3,4"]),
}
RUN_FIELDS = {"script", "command", "devices", "data", "seed", "versions", "configs"}
CONFIG_FIELDS = {"id", "seed", "config", "history", "final_test_accuracy",
                 "best_test_accuracy", "final_train_accuracy", "train_seconds", "weights",
                 "status", "per_class_accuracy", "confusion_matrix", "precision", "compiled"}
EPOCH_FIELDS = {"epoch", "train_loss", "train_accuracy", "test_accuracy", "lr", "seconds"}


def reload_and_score(script, entry, weights_path, test_images, test_labels, normalization):
    """Accuracy of the saved weights, loaded as a user would, on the run's test images, in
    the precision the results say the run used."""
    model = script.build_model(entry["config"])
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    scale, shift = data.normalizer(*normalization, device="cpu")
    amp_dtype = {"fp32": None, "bf16 autocast": torch.bfloat16}[entry["precision"]]
    cpu = rt.Runtime(torch.device("cpu"), amp_dtype=amp_dtype)
    model = rt.place_model(model, cpu)
    return train.accuracy(train.predict(model, test_images, scale, shift, cpu), test_labels)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_writes_every_output_and_weights_reload(name, any_layout, tmp_path, capsys):
    script = importlib.import_module(name)
    results_file, weights_file, extra = SCRIPTS[name]
    out = tmp_path / "out"
    status = script.main(["--data-dir", str(any_layout), "--epochs", "1", "--out", str(out)]
                         + extra)
    printed = capsys.readouterr().out
    assert status == 0
    assert "Training completed. Results summary:" in printed

    results = json.loads((out / results_file).read_text())
    assert RUN_FIELDS <= set(results)
    assert results["devices"] == ["cpu"]
    assert {"torch", "torchvision"} <= set(results["versions"])
    assert results["data"]["train_images"] == (130 if extra else 300)
    assert len(results["configs"]) == (4 if extra else len(script.CONFIGS))
    # --amp auto: bf16 on the CPU only for ResNet, and only where the CPU has it in hardware
    bf16 = name == "Resnet_model" and rt.cpu_has_native_bf16()
    assert {entry["precision"] for entry in results["configs"]} == {
        "bf16 autocast" if bf16 else "fp32"}
    for png in ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dataset = data.load_cifar10(any_layout, 130 if extra else None, results["seed"])
    normalization = (data.CIFAR10_NORMALIZATION if name == "Resnet_model"
                     else data.TUTORIAL_NORMALIZATION)
    for number, entry in enumerate(results["configs"], start=1):
        assert CONFIG_FIELDS <= set(entry)
        assert entry["config"]["num_epochs"] == 1
        with_tta = {"test_accuracy_without_tta"} if entry["config"].get("tta") else set()
        assert [set(record) for record in entry["history"]] == [EPOCH_FIELDS | with_tta]
        assert entry["weights"] == weights_file(number)
        assert list(entry["per_class_accuracy"]) == list(data.CLASSES)
        assert sum(map(sum, entry["confusion_matrix"])) == results["data"]["test_images"]
        assert f"final test accuracy {entry['final_test_accuracy']:.2f}%" in printed
        reloaded = reload_and_score(script, entry, out / entry["weights"],
                                    dataset.test_images, dataset.test_labels, normalization)
        assert reloaded == entry["final_test_accuracy"]


def test_baseline_learns_on_generated_data(pickled_data, tmp_path, capsys):
    script = importlib.import_module("Original_version_model")
    out = tmp_path / "out"
    assert script.main(["--data-dir", str(pickled_data), "--epochs", "10",
                        "--out", str(out)]) == 0
    results = json.loads((out / "training_loss.json").read_text())
    assert results["configs"][0]["final_test_accuracy"] > 80  # chance is 10%
    assert "config_1 epoch 10/10" in capsys.readouterr().out


def test_same_seed_same_result_on_cpu(pickled_data, tmp_path):
    script = importlib.import_module("Dropout_regularization")  # dropout draws random numbers
    runs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        assert script.main(["--data-dir", str(pickled_data), "--epochs", "2", "--configs", "2",
                            "--out", str(out)]) == 0
        results = json.loads((out / "training_result.json").read_text())
        history = [{key: value for key, value in record.items() if key != "seconds"}
                   for record in results["configs"][0]["history"]]
        runs.append((history, torch.load(out / "config_2.pth", weights_only=True)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][key], runs[1][1][key]) for key in runs[0][1])


def test_configs_and_epochs_flags_pick_and_override(pickled_data, tmp_path, capsys):
    script = importlib.import_module("Original_version_model_multiGPU")
    out = tmp_path / "out"
    assert script.main(["--data-dir", str(pickled_data), "--configs", "3,1", "--epochs", "2",
                        "--out", str(out)]) == 0
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


def run_script(name, *args, cwd):
    return subprocess.run([sys.executable, str(REPO / f"{name}.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing", "empty", "no-network"])
def test_no_data_is_one_clear_message(case, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"missing": ["--data-dir", str(tmp_path / "nowhere")],
            "empty": ["--data-dir", str(empty)], "no-network": []}[case]
    result = run_script("Resnet_model", *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "--data-dir" in result.stderr and "cifar-10-python.tar.gz" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_the_shared_flags(tmp_path):
    result = run_script("L2_regularization", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--epochs", "--configs", "--subset", "--data-dir", "--out", "--device",
                 "--seed"):
        assert flag in result.stdout
    assert "python L2_regularization.py" in result.stdout  # the docstring's command


def test_lenet_recipe_records_accuracy_with_and_without_tta(pickled_data, tmp_path):
    script = importlib.import_module("Original_version_model_multiGPU")
    out = tmp_path / "out"
    assert script.main(["--data-dir", str(pickled_data), "--configs", "recipe", "--epochs", "3",
                        "--out", str(out)]) == 0
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    assert entry["config"]["name"] == "recipe" and entry["id"] == f"config_{len(script.CONFIGS)}"
    history = entry["history"]
    assert all("test_accuracy_without_tta" in record for record in history)
    # one-cycle: below the peak after the first epoch, zero at the very end
    assert 0 < history[0]["lr"] < entry["config"]["lr"]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


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


def test_resnet_recipe_keys_run_on_the_cpu(pickled_data, tmp_path, monkeypatch):
    """ResNet's recipe with a batch that fits the tiny generated set."""
    script = importlib.import_module("Resnet_model")
    recipe = dict(script.CONFIGS[-1], batch_size=64, num_epochs=1)
    monkeypatch.setattr(script, "CONFIGS", [recipe])
    out = tmp_path / "out"
    assert script.main(["--data-dir", str(pickled_data), "--subset", "130",
                        "--out", str(out)]) == 0
    (entry,) = json.loads((out / "Resnet_model_result.json").read_text())["configs"]
    assert entry["status"] == "finished"


def test_compile_runs_on_the_cpu_and_saves_plain_weights(pickled_data, tmp_path):
    script = importlib.import_module("Original_version_model_multiGPU")
    out = tmp_path / "out"
    assert script.main(["--data-dir", str(pickled_data), "--configs", "4", "--epochs", "1",
                        "--compile", "--out", str(out)]) == 0
    weights = torch.load(out / "config_4.pth", weights_only=True)
    assert not any(key.startswith(("_orig_mod.", "module.")) for key in weights)
    script.LeNet().load_state_dict(weights)
