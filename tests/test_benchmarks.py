"""benchmarks/throughput.py in its quick mode: it runs, and reports what it claims to."""
import json
import subprocess
import sys

from conftest import REPO, write_pickled_batches


def test_throughput_quick_mode_with_the_gpu_mode_on_the_cpu(tmp_path):
    data_dir = write_pickled_batches(tmp_path / "data", train_per_class=52)  # 520 images
    report = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--data-dir", str(data_dir),
         "--device", "cpu", "--quick", "--rounds", "1", "--gpu", "--epochs", "1",
         "--json", str(report)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads(report.read_text())
    assert [case["case"] for case in numbers["cases"]] == [
        "LeNet, batch 4", "LeNet, batch 64", "ResNet-18, batch 128"]
    for case in numbers["cases"]:
        assert case["tutorial_images_per_s"] > 0 and case["kit_images_per_s"] > 0
        assert abs(case["ratio"] - case["kit_images_per_s"] / case["tutorial_images_per_s"]) < 1e-9
        assert f"b/a = {case['ratio']:5.2f}x" in result.stdout
    assert numbers["resnet_recipe"]["status"] == 0
    assert 0 <= numbers["resnet_recipe"]["final_test_accuracy"] <= 100
    assert "ResNet recipe:" in result.stdout
