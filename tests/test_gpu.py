"""On a CUDA GPU, what only a GPU machine can show; skipped where there is none
(tests/conftest.py). On a GPU machine: python -m pytest -m gpu"""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torchvision.transforms import functional as TF

from cifarkit import data, train
from cifarkit import runtime as rt
from conftest import (REPO, blanked_squares, checkpoint_of, labelled_images, run_script,
                      windows_found)

pytestmark = pytest.mark.gpu

PRECISIONS = {"fp32": None, "bf16 autocast": torch.bfloat16,
              "fp16 autocast with loss scaling": torch.float16}


@pytest.fixture(scope="module")
def cuda_run(pickled_data, tmp_path_factory):
    """Task 3's script as a user starts it on a GPU machine: --device cuda, --amp auto,
    nn.DataParallel over every visible GPU (the GPU alone where there is one); a report
    config and the recipe (augmentation, one-cycle, TTA)."""
    out = tmp_path_factory.mktemp("cuda") / "out"
    script = importlib.import_module("Original_version_model_multiGPU")
    recipe = next(config for config in script.CONFIGS if config.get("name") == "recipe")
    with pytest.MonkeyPatch.context() as patch:  # the configs chosen by content, not position
        configs = [{"num_epochs": 2, "lr": 0.001, "momentum": 0.9, "batch_size": 32}, recipe]
        assert run_script(script, out, pickled_data, configs, patch, "--epochs", "2",
                          device="cuda") == 0
    return script, out, json.loads((out / "training_result.json").read_text())


def test_the_sweep_script_trains_on_every_visible_gpu(cuda_run):
    _, _, results = cuda_run
    gpus = torch.cuda.device_count()
    assert len(results["devices"]) == gpus
    assert all(name.startswith("cuda") for name in results["devices"])
    assert results["backend"] == ("DataParallel" if gpus > 1 else "single process")
    assert [entry["status"] for entry in results["configs"]] == ["finished", "finished"]


def test_amp_auto_on_cuda_records_mixed_precision(cuda_run):
    _, _, results = cuda_run
    bf16_in_hardware = all(torch.cuda.get_device_capability(index)[0] >= 8
                           for index in range(torch.cuda.device_count()))
    expected = "bf16 autocast" if bf16_in_hardware else "fp16 autocast with loss scaling"
    assert {entry["precision"] for entry in results["configs"]} == {expected}


def test_weights_trained_on_cuda_load_anywhere_and_rescore_to_the_recorded_accuracy(cuda_run,
                                                                                  pickled_data):
    """README's torch.load(path, weights_only=True) gives CPU tensors (so the weights load
    on a machine without a GPU too), and on the GPU, in the recorded precision, they score
    what the results say, with TTA where the config uses it."""
    script, out, results = cuda_run
    dataset = data.load_cifar10(pickled_data)
    one_image = 100 / len(dataset.test_labels)  # cuDNN may pick other kernels for a new model
    for entry in results["configs"]:
        weights = torch.load(out / entry["weights"], weights_only=True)
        assert {tensor.device.type for tensor in weights.values()} == {"cpu"}
        model = script.build_model(entry["config"])
        model.load_state_dict(weights)
        cuda = rt.Runtime(torch.device("cuda"), amp_dtype=PRECISIONS[entry["precision"]])
        model = rt.place_model(model, cuda)
        scale, shift = data.normalizer(*script.NORMALIZATION, device="cuda")
        predictions = train.predict(model, dataset.test_images.cuda(), scale, shift, cuda,
                                    entry["config"].get("tta", False))
        assert train.accuracy(predictions, dataset.test_labels) == pytest.approx(
            entry["final_test_accuracy"], abs=one_image)


def test_page_augmentation_runs_on_cuda_uint8_as_on_the_cpu():
    """The ResNet recipe's augmentation on CUDA, where a uint8 reflect-pad kernel is not
    needed (the mirroring is in the gather indices): every crop is a window of torchvision's
    reflect-padded image (made on the CPU), every cutout a whole 8x8 square, and the batch
    keeps its labels."""
    torch.manual_seed(0)
    batch = torch.randint(1, 256, (256, 3, 32, 32), dtype=torch.uint8)
    cropped = data.random_crop(batch.cuda(), border="reflect").cpu()
    for original, image in zip(batch, cropped):
        assert len(windows_found(TF.pad(original, [4], padding_mode="reflect"), image)) == 1
    blanked = data.cutout(torch.ones(256, 3, 32, 32, device="cuda"), placement="inside")
    assert {(height, width) for _, _, height, width in blanked_squares(blanked.cpu())} == {(8, 8)}

    images, labels = labelled_images(64)
    order = torch.randperm(len(labels), device="cuda")
    identity = (torch.ones(1, 3, 1, 1, device="cuda"), torch.zeros(1, 3, 1, 1, device="cuda"))
    out, out_labels = data.prepare_batch(images.cuda(), labels.cuda(), order, *identity,
                                         augment="reflect-crop+flip+inside-cutout")
    assert out.is_cuda
    assert torch.equal(out_labels.cpu(), labels[order.cpu()])
    for image, label in zip(out.cpu(), out_labels.cpu()):
        assert set(image.unique().tolist()) == {0.0, float(label * 20 + 20)}
        assert (image == 0).sum().item() == 3 * 8 * 8


def long_run(data_dir, out, pause_at=None):
    env = dict(os.environ)
    if pause_at:
        env.update(TEST_PAUSE_AT=":".join(map(str, pause_at)), TEST_MARKERS=str(out.parent))
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "long_run.py"),
                             "--data-dir", str(data_dir), "--out", str(out), "--device", "cuda"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def histories(out):
    results = json.loads((out / "training_result.json").read_text())
    return {entry["id"]: entry for entry in results["configs"]}


def test_resume_after_sigterm_on_cuda_ends_close_to_an_uninterrupted_run(pickled_data,
                                                                         tmp_path):
    """Stopped mid-epoch on the GPU, resumed by the same command: the CUDA random-number
    state (dropout's masks) is in the checkpoint, and the run ends within float tolerance
    of an uninterrupted one (cuDNN's kernels are not bit-reproducible between runs)."""
    reference = long_run(pickled_data, tmp_path / "reference" / "out")
    _, stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, stderr[-3000:]

    out = tmp_path / "resumed" / "out"
    out.parent.mkdir()
    stopped = long_run(pickled_data, out, pause_at=(2, 2, 30))
    deadline = time.monotonic() + 300
    while not (out.parent / "paused-rank0").exists():
        assert stopped.poll() is None, stopped.communicate()
        assert time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    _, stderr = stopped.communicate(timeout=300)
    assert stopped.returncode == 143, stderr[-3000:]
    checkpoint = torch.load(checkpoint_of(out, "config_2"), weights_only=True)
    assert (checkpoint["progress"]["epoch"], checkpoint["progress"]["step"]) == (1, 30)
    assert len(checkpoint["rng"][0]["cuda"]) >= 1  # the GPU's generator, for dropout

    rerun = long_run(pickled_data, out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert "config_2: resuming from its checkpoint after epoch 1, step 30" in stdout
    resumed, uninterrupted = histories(out), histories(tmp_path / "reference" / "out")
    assert resumed.keys() == uninterrupted.keys() == {"config_1", "config_2"}
    for run_id, entry in resumed.items():
        expected = uninterrupted[run_id]
        assert entry["status"] == "finished"
        assert len(entry["history"]) == len(expected["history"])
        for record, reference_record in zip(entry["history"], expected["history"]):
            assert record["train_loss"] == pytest.approx(reference_record["train_loss"],
                                                         rel=2e-2)
        assert entry["final_test_accuracy"] == pytest.approx(expected["final_test_accuracy"],
                                                             abs=5)
