"""DistributedDataParallel under torchrun, on the CPU with gloo: two processes, one machine."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

DRIVER = REPO / "tests" / "ddp_driver.py"


def torchrun(data_dir, out, dump, launcher_args=(), script_args=(), kill=None):
    env = dict(os.environ, DDP_TEST_DUMP=str(dump), OMP_NUM_THREADS="1")
    if kill:
        env["DDP_TEST_KILL"] = str(kill)
    dump.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", *launcher_args, str(DRIVER), "--data-dir", str(data_dir),
               "--out", str(out), *script_args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def two_rank_run(pickled_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    result = torchrun(pickled_data, base / "out", base / "dump")
    assert result.returncode == 0, result.stderr[-3000:]
    return base, result


def test_two_ranks_write_one_set_of_outputs(two_rank_run):
    base, result = two_rank_run
    out = base / "out"
    assert sorted(path.name for path in out.iterdir()) == [
        "config_1.pth", "examples.png", "loss.png", "test_accuracy.png", "train_accuracy.png",
        "training_result.json"]
    results = json.loads((out / "training_result.json").read_text())
    assert results["world_size"] == 2 and results["backend"] == "gloo"
    assert results["data"]["train_images"] == 300  # the whole set, not one shard of it
    (entry,) = results["configs"]
    assert entry["status"] == "finished" and len(entry["history"]) == 3
    assert result.stdout.count("Training completed. Results summary:") == 1  # rank 0 only


def test_both_ranks_end_with_identical_weights(two_rank_run):
    base, _ = two_rank_run
    rank0 = torch.load(base / "dump" / "rank0.pth", weights_only=True)
    rank1 = torch.load(base / "dump" / "rank1.pth", weights_only=True)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    saved = torch.load(base / "out" / "config_1.pth", weights_only=True)
    assert all(torch.equal(saved[key], rank0[key]) for key in rank0)


def test_two_ranks_match_one_process_with_the_same_global_batch(two_rank_run, pickled_data,
                                                                tmp_path):
    base, _ = two_rank_run
    single = subprocess.run([sys.executable, str(DRIVER), "--data-dir", str(pickled_data),
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True, timeout=300,
                            env=dict(os.environ, DDP_TEST_DUMP=str(tmp_path)))
    assert single.returncode == 0, single.stderr
    one = torch.load(tmp_path / "out" / "config_1.pth", weights_only=True)
    two = torch.load(base / "out" / "config_1.pth", weights_only=True)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)


def test_a_killed_rank_is_restarted_and_the_run_ends_as_if_uninterrupted(two_rank_run,
                                                                           pickled_data,
                                                                           tmp_path):
    base, _ = two_rank_run
    # Kill at rank 1's 2nd stop check: epoch 2, step 25, after epoch 1's checkpoint.
    result = torchrun(pickled_data, tmp_path / "out", tmp_path / "dump",
                      launcher_args=["--max-restarts=1"], kill=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from its checkpoint after epoch 1" in result.stdout
    resumed = torch.load(tmp_path / "out" / "config_1.pth", weights_only=True)
    reference = torch.load(base / "out" / "config_1.pth", weights_only=True)
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)


def test_device_cuda_with_too_few_gpus_is_refused(pickled_data, tmp_path):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has enough GPUs for two processes")
    result = torchrun(pickled_data, tmp_path / "out", tmp_path / "dump",
                      script_args=["--device", "cuda"])
    assert result.returncode != 0
    assert ("error: --device cuda: no CUDA GPU is visible" in result.stderr
            or "one GPU per process is needed" in result.stderr)
    assert not (tmp_path / "out").exists()


def test_sigterm_to_torchrun_saves_a_checkpoint_and_a_rerun_finishes(pickled_data, tmp_path):
    """torchrun passes SIGTERM on (twice) to its workers: they agree to stop at a synchronised
    step, rank 0 saves a mid-run checkpoint, and the same command then finishes the run."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(REPO / "Original_version_model.py"),
               "--data-dir", str(pickled_data), "--out", str(out), "--epochs", "40"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoints" / "config_1_seed0.ckpt"
    deadline = time.time() + 120
    while not checkpoint.exists():
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert "Stopped by SIGTERM during config_1" in stderr
    assert "run the same torchrun command again" in stderr
    progress = torch.load(checkpoint, weights_only=True)["progress"]
    assert progress["epoch"] < 40
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from its checkpoint" in rerun.stdout
    results = json.loads((out / "training_loss.json").read_text())
    assert [record["epoch"] for record in results["configs"][0]["history"]] == list(range(1, 41))


def test_checks_for_ranks_refuse_a_too_small_batch_and_sync_bn_on_cpus():
    from cifarkit import experiment
    from cifarkit import runtime as rt
    from cifarkit.errors import UserError

    two_cpu_ranks = rt.Runtime(torch.device("cpu"), rank=0, world_size=2, backend="gloo")
    with pytest.raises(UserError, match="config_2: batch_size 1 is smaller than the 2"):
        experiment._check_batches_fit_ranks([(1, {"batch_size": 4}), (2, {"batch_size": 1})],
                                            two_cpu_ranks)
    with pytest.raises(UserError, match="config_1: sync_bn needs GPUs"):
        experiment._check_batches_fit_ranks([(1, {"batch_size": 4, "sync_bn": True})],
                                            two_cpu_ranks)
