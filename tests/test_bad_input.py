"""Interruptions, faults and bad input: resume is exact, results are never lost, bad input
is refused up front with a message naming the culprit."""
import errno
import importlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from conftest import (REPO, checkpoint_of, run_script, write_image_folders,
                      write_pickled_batches)

LONG_RUN = REPO / "tests" / "long_run.py"  # two configs with dropout, and the test hooks
CONFIG_2_STEPS = 75  # mini-batches an epoch of config_2 (300 images at batch 4)


def start_long_run(data_dir, out, pause_at=None):
    """long_run.py on the CPU; with ``pause_at`` (config, epoch, stop check) it waits there,
    mid-epoch, for the test to kill or signal it (see hooks.py)."""
    # One thread: on a shared 2-core machine, busy OpenMP threads of several processes were
    # seen to slow a LeNet step down twenty-fold.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pause_at:
        env.update(TEST_PAUSE_AT=":".join(map(str, pause_at)), TEST_MARKERS=str(out.parent))
    return subprocess.Popen([sys.executable, str(LONG_RUN), "--data-dir", str(data_dir),
                             "--out", str(out), "--device", "cpu"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_paused(process, out, timeout=300):
    marker = out.parent / "paused-rank0"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.05)


def finished_runs(out):
    """{config id: (status, history without timings, weights)} of a finished long run."""
    results = json.loads((out / "training_result.json").read_text())
    runs = {}
    for entry in results["configs"]:
        history = [{key: value for key, value in record.items() if key != "seconds"}
                   for record in entry["history"]]
        weights = torch.load(out / f"{entry['id']}.pth", weights_only=True)
        runs[entry["id"]] = (entry["status"], history, weights)
    return runs


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, pickled_data):
    out = tmp_path_factory.mktemp("reference") / "out"
    process = start_long_run(pickled_data, out)
    assert process.wait(timeout=600) == 0, process.communicate()
    return finished_runs(out)


def assert_same_as_reference(out, reference_run):
    runs = finished_runs(out)
    assert runs.keys() == reference_run.keys() == {"config_1", "config_2"}
    for run_id, (status, history, weights) in runs.items():
        _, reference_history, reference_weights = reference_run[run_id]
        assert status == "finished"
        assert history == reference_history, run_id
        assert weights.keys() == reference_weights.keys()
        assert all(torch.equal(weights[key], reference_weights[key]) for key in weights), run_id
    assert not list(out.glob("runs/*/checkpoint.ckpt"))  # removed once every config finished


def test_kill_9_mid_epoch_then_rerun_ends_bit_identical(pickled_data, tmp_path, reference_run):
    out = tmp_path / "out"
    process = start_long_run(pickled_data, out, pause_at=(1, 2, 5))  # config_1, epoch 2
    wait_until_paused(process, out)
    process.kill()
    process.wait()
    assert not (out / "config_1.pth").exists()
    (running,) = json.loads((out / "training_result.json").read_text())["configs"]
    assert running["status"] == "running" and len(running["history"]) == 1  # kept, live
    rerun = start_long_run(pickled_data, out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    # epoch 2's five steps were lost with the process: they are trained again
    assert "config_1: resuming from its checkpoint after epoch 1, step 0" in stdout
    assert_same_as_reference(out, reference_run)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_epoch_of_a_later_config_saves_and_rerun_resumes(signum, status,
                                                                   pickled_data, tmp_path,
                                                                   reference_run):
    """Stopped in config_2, step 30 of epoch 2: the JSON keeps the finished config_1 and
    config_2's first epoch, the checkpoint is mid-epoch, and the same command skips config_1,
    resumes config_2 there and ends bit for bit as a run that was never interrupted."""
    out = tmp_path / "out"
    process = start_long_run(pickled_data, out, pause_at=(2, 2, 30))
    wait_until_paused(process, out)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == status, stderr
    assert "To resume, run the same command:" in stderr
    assert "Traceback" not in stderr
    checkpoint = torch.load(checkpoint_of(out, "config_2"), weights_only=True)
    assert (checkpoint["progress"]["epoch"], checkpoint["progress"]["step"]) == (1, 30)
    assert 0 < checkpoint["progress"]["step"] < CONFIG_2_STEPS  # mid-epoch
    kept = json.loads((out / "training_result.json").read_text())["configs"]
    assert [(entry["id"], entry["status"]) for entry in kept] == [
        ("config_1", "finished"), ("config_2", "running")]
    assert len(kept[1]["history"]) == 1  # the epoch config_2 finished before the signal
    assert (out / "config_1.pth").exists() and not (out / "config_2.pth").exists()

    rerun = start_long_run(pickled_data, out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert "config_1: already finished" in stdout
    assert "config_2: resuming from its checkpoint after epoch 1, step 30" in stdout
    assert_same_as_reference(out, reference_run)


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


def test_a_diverging_config_is_marked_and_the_next_one_runs(pickled_data, tmp_path,
                                                           monkeypatch, capsys):
    out = tmp_path / "out"
    configs = [{"num_epochs": 2, "lr": 1e6, "momentum": 0.9, "batch_size": 32},
               {"num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32}]
    status = run_script("Original_version_model_multiGPU", out, pickled_data, configs, monkeypatch)
    captured = capsys.readouterr()
    assert status == 1
    results = json.loads((out / "training_result.json").read_text())
    diverged, healthy = results["configs"]
    assert diverged["status"] == "diverged"
    assert diverged["diverged_at"]["epoch"] == 1 and diverged["diverged_at"]["step"] >= 1
    assert diverged["weights"] is None and not (out / "config_1.pth").exists()
    assert healthy["status"] == "finished" and (out / "config_2.pth").exists()
    assert "DIVERGED at epoch 1" in captured.out
    assert "config_1: the loss became NaN or infinite" in captured.err


def test_out_of_memory_names_the_config_and_keeps_the_others(pickled_data, tmp_path,
                                                             monkeypatch, capsys):
    real_loss = torch.nn.functional.cross_entropy

    def out_of_memory_on_big_batches(outputs, targets, **kwargs):
        if len(targets) > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(outputs, targets, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", out_of_memory_on_big_batches)
    out = tmp_path / "out"
    configs = [dict(BASE, batch_size=512), dict(BASE, batch_size=32)]
    status = run_script("Original_version_model_multiGPU", out, pickled_data, configs, monkeypatch,
                        "--configs", "2,1")
    captured = capsys.readouterr()
    assert status == 1
    assert "config_1 ran out of GPU memory at batch_size 512" in captured.err
    results = {entry["id"]: entry for entry in
               json.loads((out / "training_result.json").read_text())["configs"]}
    assert results["config_2"]["status"] == "finished"
    assert results["config_1"]["status"] == "out_of_memory"


class Payload:
    """A pickle that, if ever unpickled with plain pickle, creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_foreign_checkpoint_is_refused_never_run(pickled_data, tmp_path, monkeypatch,
                                                  capsys):
    """A file put by hand where an unfinished run keeps its checkpoint is read only as data:
    refused by name, never unpickled."""
    out = tmp_path / "out"
    configs = [BASE]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    (record_path,) = out.glob("runs/*/run.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, status="running")))  # as if unfinished
    (record_path.parent / "weights.pth").unlink()
    marker = tmp_path / "pwned"
    checkpoint = record_path.parent / "checkpoint.ckpt"
    checkpoint.write_bytes(pickle.dumps(Payload(marker)))
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 2
    assert "checkpoint.ckpt: not a checkpoint written by this kit" in capsys.readouterr().err
    assert not marker.exists()

    torch.save({"some": "dict"}, checkpoint)
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 2
    assert "not a checkpoint written by this kit" in capsys.readouterr().err


# ---- bad input: exit status 2, one message naming the culprit, nothing written ----

BASE = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
BAD_CONFIGS = [
    ("L2_regularization", [dict(BASE, momentun=0.9)],
     "config_1: unknown key 'momentun'. Did you mean 'momentum'?"),
    ("L2_regularization", [BASE, dict(BASE, lr="0.1")], "config_2: 'lr' must be a number"),
    ("L2_regularization", [dict(BASE, num_epochs=0)], "config_1: 'num_epochs' must be at least 1"),
    ("L2_regularization", [dict(BASE, num_epochs=2.5)], "config_1: 'num_epochs' must be a whole"),
    ("L2_regularization", [dict(BASE, lr=0)], "config_1: 'lr' must be greater than 0"),
    ("L2_regularization", [dict(BASE, momentum=1.0)], "config_1: 'momentum' must be in [0, 1)"),
    ("L2_regularization", [dict(BASE, batch_size=0)], "config_1: 'batch_size' must be at least 1"),
    ("L2_regularization", [dict(BASE, weight_decay=-1e-4)],
     "config_1: 'weight_decay' must be 0 or more"),
    ("Dropout_regularization", [dict(BASE, dropout=1.0)], "config_1: 'dropout' must be in [0, 1)"),
    ("L2_regularization", [dict(BASE, dropout=0.5)], "config_1: unknown key 'dropout'"),
    ("L2_regularization", [], "CONFIGS is empty"),
]


def snapshot(folder):
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns
            for path in sorted(folder.rglob("*"))}


@pytest.fixture
def existing_out(tmp_path):
    """An output folder that already holds something, to prove a refusal leaves it as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_result.json").write_text("{}")
    return out


@pytest.mark.parametrize("name, configs, message", BAD_CONFIGS)
def test_bad_configs_are_refused(name, configs, message, pickled_data, existing_out,
                                 monkeypatch, capsys):
    before = snapshot(existing_out)
    assert run_script(name, existing_out, pickled_data, configs, monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert snapshot(existing_out) == before


BAD_FLAGS = [
    (["--configs", "4"], "--configs 4: '4' is not a config of this script"),
    (["--configs", "1,recipes"], "'recipes' is not a config of this script (it has config_1 "
                                 "to config_3, or a name: recipe, speedrun)"),
    (["--subset", "100000"], "--subset 100000: must be between 10 and the 300"),
    (["--subset", "20", "--configs", "2"], "--subset 20 is smaller than one batch of config_2"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_flags_are_refused(flags, message, pickled_data, existing_out, monkeypatch,
                               capsys):
    before = snapshot(existing_out)
    configs = [BASE, dict(BASE, batch_size=32, name="recipe"), dict(BASE, name="speedrun")]
    assert run_script("Original_version_model_multiGPU", existing_out, pickled_data, configs,
                      monkeypatch, *flags) == 2
    assert message in capsys.readouterr().err
    assert snapshot(existing_out) == before


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "Original_version_model.py: error: argument --epochs: 0 must be at least 1"),
    (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
])
def test_bad_flag_values_stop_argparse(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module("Original_version_model").main(flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_device_cuda_without_cuda_is_refused(pickled_data, existing_out, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine too
    before = snapshot(existing_out)
    assert run_script("Original_version_model", existing_out, pickled_data, None, None,
                      device="cuda") == 2
    assert "--device cuda: no CUDA GPU is visible" in capsys.readouterr().err
    assert snapshot(existing_out) == before


def test_an_output_folder_that_cannot_be_written_is_refused(pickled_data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run_script("Original_version_model", blocker / "out", pickled_data, None, None) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_a_nearly_full_disk_is_refused_before_training(pickled_data, existing_out,
                                                      monkeypatch, capsys):
    from cifarkit import outputs

    monkeypatch.setattr(outputs.shutil, "disk_usage",
                        lambda path: SimpleNamespace(total=2**40, free=5 * 2**20))
    before = snapshot(existing_out)
    assert run_script("Original_version_model", existing_out, pickled_data, None, None) == 2
    assert "only 5 MiB free on that disk" in capsys.readouterr().err
    assert snapshot(existing_out) == before


def test_a_failed_write_exits_1_keeps_what_was_saved_and_a_rerun_carries_on(
        pickled_data, tmp_path, monkeypatch, capsys):
    from cifarkit import outputs

    real_save_weights, saved = outputs.save_weights, []

    def disk_full_after_config_1(model, path):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        real_save_weights(model, path)

    monkeypatch.setattr(outputs, "save_weights", disk_full_after_config_1)
    out = tmp_path / "out"
    configs = [BASE, dict(BASE, lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 1
    error = capsys.readouterr().err
    assert f"error: cannot write to {out}" in error and "No space left on device" in error
    assert "Traceback" not in error
    kept = json.loads((out / "training_result.json").read_text())["configs"]
    assert [(entry["id"], entry["status"]) for entry in kept] == [
        ("config_1", "finished"), ("config_2", "running")]  # never "finished" without weights
    assert (out / "config_1.pth").exists() and not (out / "config_2.pth").exists()

    monkeypatch.setattr(outputs, "save_weights", real_save_weights)  # room again
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    results = json.loads((out / "training_result.json").read_text())["configs"]
    assert [(entry["id"], entry["status"]) for entry in results] == [
        ("config_1", "finished"), ("config_2", "finished")]
    assert (out / "config_2.pth").exists()


def corrupt(kind, tmp_path):
    """A broken copy of the generated data; returns (data dir, the culprit the message names)."""
    if kind in ("missing batch", "truncated batch", "labels out of range", "archive",
                "code in a batch"):
        root = write_pickled_batches(tmp_path / "data")
        batches = root / "cifar-10-batches-py"
        if kind == "missing batch":
            (batches / "data_batch_3").unlink()
            return root, "data_batch_3"
        if kind == "truncated batch":
            raw = (batches / "data_batch_2").read_bytes()
            (batches / "data_batch_2").write_bytes(raw[: len(raw) // 2])
            return root, "data_batch_2"
        if kind == "code in a batch":
            (batches / "data_batch_4").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
            return root, "data_batch_4: not a readable CIFAR-10 batch file"
        if kind == "labels out of range":
            batch = pickle.loads((batches / "test_batch").read_bytes())
            batch["labels"][0] = 10
            (batches / "test_batch").write_bytes(pickle.dumps(batch))
            return root, "test_batch: labels outside 0-9"
        archive_dir = tmp_path / "archive"
        archive_dir.mkdir()
        (archive_dir / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 100)
        return archive_dir, "cifar-10-python.tar.gz: not a readable .tar.gz archive"
    root = write_image_folders(tmp_path / "data")
    cat = root / "train" / "cat"
    first = sorted(cat.iterdir())[0]
    if kind == "class folder missing":
        shutil.rmtree(root / "test" / "ship")
        return root, "ship: class folder missing"
    if kind == "class folder empty":
        for path in cat.iterdir():
            path.unlink()
        return root, "cat: class folder holds no .png or .jpg images"
    if kind == "extra folder":
        (root / "train" / "unicorn").mkdir()
        return root, "folders that are not CIFAR-10 classes: unicorn"
    if kind == "undecodable image":
        first.write_bytes(b"this is not a png")
        return root, f"{first.name}: cannot decode this image"
    if kind == "wrong size":
        Image.new("RGB", (64, 64)).save(first)
        return root, f"{first.name}: a 64x64 RGB image"
    Image.new("L", (32, 32)).save(first)  # grayscale
    return root, f"{first.name}: a 32x32 L image"


@pytest.mark.parametrize("kind", [
    "missing batch", "truncated batch", "code in a batch", "labels out of range", "archive",
    "class folder missing", "class folder empty", "extra folder", "undecodable image",
    "wrong size", "grayscale"])
def test_bad_data_is_refused_naming_the_file(kind, tmp_path, existing_out, capsys):
    data_dir, culprit = corrupt(kind, tmp_path)
    before = snapshot(existing_out)
    assert run_script("Original_version_model", existing_out, data_dir, None, None, "--epochs",
                      "1") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and culprit in error
    assert snapshot(existing_out) == before
    assert not (tmp_path / "pwned").exists()
