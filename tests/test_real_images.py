"""One run on real CIFAR-10 images: the JPEG copy in ../shared/cifar10-jpeg."""
import json
import re

from conftest import run_script, shared_jpeg_or_skip


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
