"""GPU faults under torchrun, injected on the CPU (gloo): out of memory on one rank, a slow
first download. Both must end the same way on every rank, quickly, with nothing lost."""
import json
import os
import socket
import subprocess
import sys
import time

from conftest import REPO, checkpoint_of

DRIVER = REPO / "tests" / "fault_driver.py"


def torchrun(fault, *script_args, cwd=REPO, **env):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(DRIVER), "--device", "cpu", *map(str, script_args)]
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", FAULT=fault, **env))
    return result, time.monotonic() - started


def test_out_of_memory_on_one_rank_stops_that_config_on_both_and_the_next_trains(
        pickled_data, tmp_path):
    out = tmp_path / "out"
    result, _ = torchrun("oom", "--data-dir", pickled_data, "--out", out)
    assert result.returncode == 1, result.stderr[-3000:]  # a config ran out of memory
    assert "config_1 ran out of GPU memory at batch_size 16" in result.stderr
    assert "[rank0]: Traceback" not in result.stderr  # torchrun's own report of status 1
    assert "[rank1]: Traceback" not in result.stderr  # is all the traceback there is
    entries = {entry["id"]: entry for entry in
               json.loads((out / "training_result.json").read_text())["configs"]}
    assert entries["config_1"]["status"] == "out_of_memory"
    assert entries["config_2"]["status"] == "finished"
    assert (out / "config_2.pth").exists() and not (out / "config_1.pth").exists()


def test_out_of_memory_inside_the_forward_of_a_batchnorm_model_stops_both_ranks_at_once(
        pickled_data, tmp_path):
    """DDP would broadcast BatchNorm's buffers before each forward: an out-of-memory error in
    the forward on one rank, and its recovery step, put the ranks' collectives out of step
    (a hang until the timeout, 20 s here, then a lost job). Both ranks stop that config and
    train the next."""
    out = tmp_path / "out"
    result, _ = torchrun("oom_batchnorm", "--data-dir", pickled_data, "--out", out)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "config_1 ran out of GPU memory at batch_size 16" in result.stderr
    entries = {entry["id"]: entry for entry in
               json.loads((out / "training_result.json").read_text())["configs"]}
    assert entries["config_1"]["status"] == "out_of_memory"
    assert entries["config_2"]["status"] == "finished"


def test_out_of_memory_inside_a_forward_with_sync_bn_ends_the_run_at_once_keeping_the_checkpoint(
        pickled_data, tmp_path):
    """SyncBatchNorm all-reduces inside the forward: after an out-of-memory error there, no
    step of the failed rank can meet the collective the others wait in. That rank says so
    and leaves at once; the others lose contact and stop; the last epoch's checkpoint stays
    for a rerun. (Before: collectives out of step, a hang until the timeout.)"""
    out = tmp_path / "out"
    result, seconds = torchrun("oom_sync_bn", "--data-dir", pickled_data, "--out", out)
    assert result.returncode == 1, result.stderr[-3000:]
    assert ("config_1 ran out of GPU memory at batch_size 16 inside a forward with "
            "SyncBatchNorm (sync_bn)") in result.stderr
    assert "rank 0 lost contact with the other ranks" in result.stderr
    assert seconds < 20  # no wait for the process group's timeout
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    assert entry["status"] == "running" and len(entry["history"]) == 1
    assert checkpoint_of(out).exists()


def test_a_download_slower_than_the_process_group_timeout_does_not_kill_the_job(
        pickled_data, tmp_path):
    """Every rank fetches (or finds) the data before the ranks wait on each other."""
    result, seconds = torchrun("slow_download", "--epochs", "1", "--out", tmp_path / "out",
                               cwd=tmp_path, FAULT_SOURCE=str(pickled_data), FAULT_SECONDS="6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "config_1.pth").exists()
    assert (tmp_path / "data" / "cifar-10-batches-py").is_dir()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_the_ranks_wait_for_a_late_rank_as_long_as_the_timeout_says(pickled_data, tmp_path):
    """Where the ranks find each other (the store, here hosted by rank 0) they wait as long
    as the process group's timeout, not the store's own 5 minutes: a rank 0 later than that
    timeout (its machine downloading the data) makes the others stop with one message at
    the timeout (with the store's own, rank 1 would have waited for it, and trained)."""
    too_late, seconds = torchrun("late_rank0", "--data-dir", pickled_data, "--out",
                                 tmp_path / "too-late", FAULT_SECONDS="40", FAULT_TIMEOUT="6",
                                 FAULT_PORT=free_port())
    assert too_late.returncode != 0
    assert "error: rank 1 waited 0:00:06 for the other ranks to start" in too_late.stderr
    assert seconds < 40  # rank 1 gave up at its timeout; rank 0 then never started training
