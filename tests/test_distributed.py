"""torchrun: DistributedDataParallel on the CPU with gloo, two processes on one machine. One
set of outputs, the same weights as one process with the same global batch, ranks that
agree on a precision, and a rank killed or a SIGTERM mid-epoch that ends in a resume as exact
as an uninterrupted run (or, without restarts, in a line that says how to resume). GPU
faults under torchrun (out of memory on one rank, a late rank): test_gpu.py."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, checkpoint_of, run_script

DRIVER = REPO / "tests" / "ddp_driver.py"  # Task 3's LeNet, 3 epochs of 38 steps, test hooks


def torchrun_command(data_dir, out, dump, launcher_args=(), device="cpu", script_args=()):
    """The torchrun command (two CPU processes unless ``device`` says) and its environment."""
    dump.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DDP_TEST_DUMP=str(dump), TEST_MARKERS=str(dump), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", *launcher_args, str(DRIVER), "--data-dir", str(data_dir),
               "--out", str(out), "--device", device, *script_args]
    return command, env


def torchrun(data_dir, out, dump, launcher_args=(), device="cpu", script_args=(), **hooks):
    command, env = torchrun_command(data_dir, out, dump, launcher_args, device, script_args)
    return subprocess.run(command, cwd=REPO, env=dict(env, **hooks), capture_output=True,
                          text=True, timeout=600)


def history_and_weights(out):
    """The one config's history (without timings) and final weights."""
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    history = [{key: value for key, value in record.items() if key != "seconds"}
               for record in entry["history"]]
    return history, torch.load(out / "config_1.pth", weights_only=True)


def assert_same_as_uninterrupted(out, two_rank_run):
    history, weights = history_and_weights(out)
    reference_history, reference_weights = history_and_weights(two_rank_run[0] / "out")
    assert history == reference_history
    assert all(torch.equal(weights[key], reference_weights[key]) for key in reference_weights)


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
        "config_1.pth", "examples.png", "loss.png", "runs", "test_accuracy.png",
        "train_accuracy.png", "training_result.json"]
    assert len(list(out.glob("runs/*"))) == 1
    results = json.loads((out / "training_result.json").read_text())
    assert results["world_size"] == 2 and results["backend"] == "gloo"
    assert results["devices"] == ["rank 0: cpu", "rank 1: cpu"]
    assert results["data"]["train_images"] == 300  # the whole set, not one shard of it
    (entry,) = results["configs"]
    assert entry["status"] == "finished" and len(entry["history"]) == 3
    assert result.stdout.count("Training completed. Results summary:") == 1  # rank 0 only
    assert {(base / "dump" / f"exit-rank{rank}").read_text() for rank in (0, 1)} == {"0"}


def test_both_ranks_end_with_identical_weights(two_rank_run):
    base, _ = two_rank_run
    rank0 = torch.load(base / "dump" / "rank0.pth", weights_only=True)
    rank1 = torch.load(base / "dump" / "rank1.pth", weights_only=True)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    saved = torch.load(base / "out" / "config_1.pth", weights_only=True)
    assert all(torch.equal(saved[key], rank0[key]) for key in rank0)


def test_two_ranks_match_one_process_with_the_same_global_batch(two_rank_run, pickled_data,
                                                                tmp_path):
    """The same weights, and the same history: loss and train accuracy are summed over the
    ranks, so each epoch's record is the global one, not rank 0's half."""
    single = subprocess.run([sys.executable, str(DRIVER), "--data-dir", str(pickled_data),
                             "--out", str(tmp_path / "out"), "--device", "cpu"], cwd=REPO,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert single.returncode == 0, single.stderr
    one_history, one = history_and_weights(tmp_path / "out")
    two_history, two = history_and_weights(two_rank_run[0] / "out")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    one_image = 100 / 300  # percent: float rounding may flip one borderline prediction
    assert len(two_history) == len(one_history) == 3
    for two_record, one_record in zip(two_history, one_history):
        assert two_record["train_loss"] == pytest.approx(one_record["train_loss"], rel=1e-5)
        assert two_record["train_accuracy"] == pytest.approx(one_record["train_accuracy"],
                                                             abs=one_image)
        assert two_record["test_accuracy"] == pytest.approx(one_record["test_accuracy"],
                                                            abs=one_image)


def test_a_rank_killed_mid_epoch_is_restarted_and_the_run_ends_as_if_uninterrupted(
        two_rank_run, pickled_data, tmp_path):
    """Rank 1 dies (SIGKILL) at step 25 of epoch 2, after epoch 1's checkpoint: torchrun
    restarts both ranks, they resume from the end of epoch 1, train the lost 25 steps
    again and end with the uninterrupted run's weights and history, bit for bit. (A killed
    worker saves nothing: the checkpoint it resumes from is always an epoch's end.)"""
    dump = tmp_path / "dump"
    result = torchrun(pickled_data, tmp_path / "out", dump, launcher_args=["--max-restarts=1"],
                      TEST_KILL_AT="1:2:1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (dump / "killed-rank1").exists()  # the kill did happen
    assert "resuming from its checkpoint after epoch 1, step 0" in result.stdout
    assert_same_as_uninterrupted(tmp_path / "out", two_rank_run)


def test_device_cuda_with_too_few_gpus_is_refused(pickled_data, tmp_path, monkeypatch,
                                                 capsys):
    """Rank 0 of two torchrun processes on this machine (its environment, set here: the
    refusal comes before any process group)."""
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has enough GPUs for two processes")
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert run_script("Original_version_model_multiGPU", tmp_path / "out", pickled_data, None,
                      None, device="cuda") == 2
    stderr = capsys.readouterr().err
    assert ("error: --device cuda: no CUDA GPU is visible" in stderr
            or "one GPU per process is needed" in stderr)
    assert not (tmp_path / "out").exists()


def test_sigterm_to_torchrun_mid_epoch_saves_and_the_same_command_resumes(two_rank_run,
                                                                          pickled_data,
                                                                          tmp_path):
    """torchrun passes SIGTERM on to its workers; both ranks, held at step 25 of epoch 2,
    agree to stop there, rank 0 saves a mid-epoch checkpoint, both exit with 143, and the
    same command ends exactly as the uninterrupted run."""
    out, dump = tmp_path / "out", tmp_path / "dump"
    command, env = torchrun_command(pickled_data, out, dump)
    launcher = subprocess.Popen(command, cwd=REPO, env=dict(env, TEST_PAUSE_AT="1:2:1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not all((dump / f"paused-rank{rank}").exists() for rank in (0, 1)):
        assert launcher.poll() is None, launcher.communicate()
        assert time.monotonic() < deadline, "the ranks never reached their pause point"
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode != 0  # torchrun reports the stop, never success
    assert {(dump / f"exit-rank{rank}").read_text() for rank in (0, 1)} == {"143"}
    assert "Stopped by SIGTERM during config_1" in stderr
    assert "run the same torchrun command again" in stderr
    progress = torch.load(checkpoint_of(out), weights_only=True)["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 25)

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from its checkpoint after epoch 1, step 25" in rerun.stdout
    assert_same_as_uninterrupted(out, two_rank_run)


def test_checks_for_ranks_refuse_a_too_small_batch_and_sync_bn_on_cpus():
    from cifarkit import runtime as rt
    from cifarkit.errors import UserError

    two_cpu_ranks = rt.Runtime(torch.device("cpu"), rank=0, world_size=2, backend="gloo")
    with pytest.raises(UserError, match="config_2: batch_size 1 is smaller than the 2"):
        rt.check_configs_fit([(1, {"batch_size": 4}), (2, {"batch_size": 1})], two_cpu_ranks)
    with pytest.raises(UserError, match="config_1: sync_bn needs GPUs"):
        rt.check_configs_fit([(1, {"batch_size": 4, "sync_bn": True})], two_cpu_ranks)


def test_ranks_whose_gpus_differ_agree_on_one_precision_and_stay_identical(pickled_data,
                                                                           tmp_path):
    """An A100 beside a V100 (simulated: alone, rank 0 would pick bf16 and rank 1 fp16 with
    loss scaling): the ranks agree on fp16 with loss scaling, so their gradients are scaled
    alike and both end with the same weights; the JSON says so and names each rank's
    device."""
    out, dump = tmp_path / "out", tmp_path / "dump"
    result = torchrun(pickled_data, out, dump, script_args=["--epochs", "1"],
                      TEST_RANK_PRECISIONS="bf16,fp16")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "training_result.json").read_text())
    assert results["precision"] == "fp16 autocast with loss scaling"
    assert results["devices"] == ["rank 0: cpu", "rank 1: cpu"]
    ranks = [torch.load(dump / f"rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])


def test_batchnorm_statistics_saved_are_those_of_the_buffer_broadcast(pickled_data, tmp_path):
    """The kit turns DDP's broadcast of BatchNorm buffers off (it cannot survive an
    out-of-memory error inside a forward): rank 0, which tests and saves, ends with the same
    weights and running statistics, bit for bit, as with the broadcast (config_2: the same
    config, trained with it)."""
    out, dump = tmp_path / "out", tmp_path / "dump"
    # --restart: config_2 trains its own run (the same values would otherwise share one)
    result = torchrun(pickled_data, out, dump, script_args=["--restart"], TEST_BATCHNORM="1")
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # what each rank's DDP was told, config by config
        assert (dump / f"broadcast-rank{rank}").read_text().split() == ["False", "True"]
    without, broadcast = (torch.load(out / f"config_{number}.pth", weights_only=True)
                          for number in (1, 2))
    assert "norm.running_mean" in without
    assert all(torch.equal(without[key], broadcast[key]) for key in without)


def test_a_rank_killed_without_restarts_says_how_to_resume(pickled_data, tmp_path):
    """A rank killed (SIGKILL) under torchrun without --max-restarts: the job stops, and rank 0
    says so and how to resume."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DDP_TEST_DUMP=str(tmp_path / "dump"),
               DDP_TEST_KILL="2")
    (tmp_path / "dump").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(REPO / "tests" / "ddp_driver.py"), "--data-dir", str(pickled_data), "--out",
         str(tmp_path / "out"), "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "error: rank 0 lost contact with the other ranks" in result.stderr
    assert "To resume, run the same torchrun command again" in result.stderr


def test_a_refusal_under_torchrun_is_one_line_and_exit_2(pickled_data, tmp_path):
    """Every rank meets the same refusal; rank 0 says it, the others wait a moment for it to
    be said and leave quietly when torchrun stops them (no Terminated traceback)."""
    result = torchrun(pickled_data, tmp_path / "out", tmp_path / "dump",
                      script_args=("--configs", "nope"))
    assert "'nope' is not a config of this script" in result.stderr
    assert "Terminated" not in result.stderr, result.stderr[-2000:]
    # each rank's own exit status (torchrun itself exits 1 when a worker fails)
    statuses = {path.name: path.read_text() for path in (tmp_path / "dump").glob("exit-rank*")}
    assert statuses == {"exit-rank0": "2", "exit-rank1": "2"}
