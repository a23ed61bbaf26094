"""benchmarks/: throughput.py in its quick mode runs and reports what it claims to;
score.py rescores saved weights."""
import json
import sys

import pytest

from cifarkit import runtime as rt
from conftest import REPO, write_pickled_batches


def test_throughput_quick_mode_with_the_gpu_mode_on_the_cpu(tmp_path, monkeypatch, capsys):
    """In this process, on 130 images: the recipe's batch of 512 cut to 64 in its CONFIGS (as
    a student edits it), so that its epoch trains 130 images, not 512 (20 s here)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import Resnet_model
    import throughput

    recipe = next(config for config in Resnet_model.CONFIGS if config.get("name") == "recipe")
    monkeypatch.setitem(recipe, "batch_size", 64)
    data_dir = write_pickled_batches(tmp_path / "data", train_per_class=13)  # 130 images
    report = tmp_path / "throughput.json"
    assert throughput.main(["--data-dir", str(data_dir), "--device", "cpu", "--quick",
                            "--rounds", "1", "--gpu", "--epochs", "1", "--subset", "130",
                            "--cases", "1,2", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads(report.read_text())
    # case 3 (ResNet-18) is the same path with another model, and 15 s here: left out for
    # the suite's time (--gpu below still takes a ResNet-18 step of the kit's loop)
    assert [case["case"] for case in numbers["cases"]] == ["LeNet, batch 4", "LeNet, batch 64"]
    for case in numbers["cases"]:
        assert case["tutorial_images_per_s"] > 0 and case["kit_images_per_s"] > 0
        assert abs(case["ratio"] - case["kit_images_per_s"] / case["tutorial_images_per_s"]) < 1e-9
        assert f"b/a = {case['ratio']:5.2f}x" in printed
        assert case["ceiling_images_per_s"] > 0
        assert f"c/a = {case['ceiling_ratio']:5.2f}x" in printed
    # each follows its script's --amp auto: LeNet in fp32 on the CPU, ResNet in bf16 where
    # the CPU has bf16 in hardware
    bf16 = "bf16 autocast" if rt.cpu_has_native_bf16() else "fp32"
    assert [case["kit_precision"] for case in numbers["cases"]] == ["fp32", "fp32"]
    assert numbers["resnet_recipe"]["status"] == 0
    assert numbers["resnet_recipe"]["precision"] == bf16
    assert 0 <= numbers["resnet_recipe"]["final_test_accuracy"] <= 100
    assert "ResNet recipe:" in printed and "ResNet-18 epoch, batch 128" in printed


def test_score_rescores_saved_weights_to_the_recorded_accuracy(pickled_data, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import score
    import Dropout_regularization  # its LeNet takes the config's dropout rate

    out = tmp_path / "out"
    # on the CPU in fp32, as score.py scores (on CUDA the run would be in bf16)
    assert Dropout_regularization.main(["--data-dir", str(pickled_data), "--epochs", "2",
                                        "--out", str(out), "--device", "cpu"]) == 0
    results = json.loads((out / "training_result.json").read_text())
    files = [str(out / entry["weights"]) for entry in results["configs"]]
    scores = score.main(["--data-dir", str(pickled_data)] + files)
    assert [scores[file] for file in files] == [
        entry["final_test_accuracy"] for entry in results["configs"]]
    with pytest.raises(SystemExit, match="no such weights file"):
        score.main(["--data-dir", str(pickled_data), str(out / "config_9.pth")])


def test_step_profile_splits_the_kit_step_into_its_parts(pickled_data):
    """The profile counts every top-level operator once: the parts are each there, none is
    negative and together they do not exceed the wall time (the rest is Python)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import step_profile
    from cifarkit import data

    dataset = data.load_cifar10(str(pickled_data))
    wall, parts = step_profile.profile_steps(dataset.train_images, dataset.train_labels, 4, 40,
                                             rt.init_runtime("cpu"), warmup=2)
    assert set(parts) == set(step_profile.PARTS)
    assert all(seconds > 0 for seconds in parts.values()), parts
    assert sum(parts.values()) <= wall
    assert step_profile.part_of("Optimizer.step#SGD.step") == "optimizer"
    assert step_profile.part_of("aten::index_select") == "input"
    assert step_profile.part_of("autograd::engine::evaluate_function: ConvolutionBackward0") \
        == "model"
    assert step_profile.part_of("aten::cross_entropy_loss") == "loss"
    assert step_profile.part_of("aten::argmax") == "sums"


def test_side_by_side_times_two_runs_at_once_against_one_and_compares_their_results(
        pickled_data, capsys, monkeypatch):
    """Two runs with torch's default threads (they take turns at the CPU) beside one alone."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import side_by_side

    monkeypatch.setattr(sys, "argv", ["side_by_side.py", "--data-dir", str(pickled_data),
                                      "--configs", "1", "--epochs", "1"])
    side_by_side.main()
    said = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in said[:3]] == ["alone", "first", "second"]
    assert said[3] == "side by side, the same results as alone (histories and weights): yes"


def test_speedrun_ablation_trains_each_variant_as_the_speedrun_with_its_change(pickled_data,
                                                                              capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speedrun_ablation

    rows = speedrun_ablation.main(["--data-dir", str(pickled_data), "--variants", "3 epochs",
                                   "3 epochs, peak 0.1, no TTA"])
    assert list(rows) == ["3 epochs", "3 epochs, peak 0.1, no TTA"]
    table = capsys.readouterr().out.splitlines()
    assert table[-2].startswith("| 3 epochs | ") and len(table) == 5
    assert all(len(seconds) == 1 and seconds[0] > 0 for seconds, _ in rows.values())
