"""GPU faults under torchrun, injected on the CPU (gloo): out of memory on one rank, a slow
first download. Both must end the same way on every rank, quickly, with nothing lost."""
import json
import os
import subprocess
import sys
import time

from conftest import REPO

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


def test_a_download_slower_than_the_process_group_timeout_does_not_kill_the_job(
        pickled_data, tmp_path):
    """Every rank fetches (or finds) the data before the ranks wait on each other."""
    result, seconds = torchrun("slow_download", "--epochs", "1", "--out", tmp_path / "out",
                               cwd=tmp_path, FAULT_SOURCE=str(pickled_data), FAULT_SECONDS="15")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "config_1.pth").exists()
    assert (tmp_path / "data" / "cifar-10-batches-py").is_dir()
