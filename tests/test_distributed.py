"""DistributedDataParallel under torchrun, on the CPU with gloo: two processes, one machine."""
import json
import os
import subprocess
import sys

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
