"""Stopping a run and carrying it on: Ctrl-C (once or twice), SIGTERM, kill -9 at any
moment. Each ends in one line that says how to resume (or that nothing was trained), nothing
finished is lost, a lock or a half-written file left by a kill blocks nothing, and the same
command resumes from the checkpoint and ends bit for bit as a run that was never
interrupted. (torchrun's ranks: test_distributed.py; on a GPU: test_gpu.py.)"""
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifarkit import data, plots, signals, store, train
from conftest import (REPO, Killed, assert_still_there, assert_views_are_the_runs,
                      checkpoint_of, entries, finished_runs, long_run_results, run_script,
                      start_long_run, wait_until_paused)

TINY = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
SCRIPT = "L2_regularization"
RESULTS = "training_result.json"
# The PNGs are built, not rendered (conftest's unrendered: rendering is most of what a run
# costs here), except in the tests that ask for rendered.
pytestmark = pytest.mark.usefixtures("unrendered")


# ---- kill -9 or a signal in the middle of an epoch: the rerun ends bit for bit ----

CONFIG_2_STEPS = 75  # mini-batches an epoch of config_2 (300 images at batch 4)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, pickled_data):
    out = tmp_path_factory.mktemp("reference") / "out"
    process = start_long_run(pickled_data, out)
    assert process.wait(timeout=600) == 0, process.communicate()
    return long_run_results(out)


def assert_same_as_reference(out, reference_run):
    runs = long_run_results(out)
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


def test_a_batchnorm_model_with_augmentation_resumes_bit_for_bit(pickled_data, tmp_path):
    """BatchNorm's running statistics and the augmentation's crops, flips and cutouts (drawn
    at every step) carry on exactly after SIGTERM mid-epoch (the GPU tests run it on CUDA)."""
    env = {"LONG_RUN_MODEL": "batchnorm-augmented"}
    reference = start_long_run(pickled_data, tmp_path / "reference" / "out", env=env)
    assert reference.wait(timeout=600) == 0, reference.communicate()
    out = tmp_path / "out"
    process = start_long_run(pickled_data, out, pause_at=(2, 2, 30), env=env)
    wait_until_paused(process, out)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143, process.communicate()
    rerun = start_long_run(pickled_data, out, env=env)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert "config_2: resuming from its checkpoint after epoch 1, step 30" in stdout
    runs = long_run_results(out)
    assert any("running_mean" in key for key in runs["config_2"][2])
    assert_same_as_reference(out, long_run_results(tmp_path / "reference" / "out"))


def test_time_stopped_by_ctrl_z_is_not_training_time(pickled_data, tmp_path, monkeypatch):
    """Ctrl-Z (SIGTSTP) mid-epoch, fg 2 s later: the epoch's seconds, the training time the
    results and the report show, leave the 2 s out (they counted them)."""
    real, checks, wakers = signals.StopRequest.requested, [], []

    def stopped_at_the_third_step(stop):
        checks.append(stop)
        if len(checks) == 3:
            wakers.append(subprocess.Popen(["sh", "-c", f"sleep 2; kill -CONT {os.getpid()}"]))
            os.kill(os.getpid(), signal.SIGTSTP)
        return real(stop)

    monkeypatch.setattr(signals.StopRequest, "requested", stopped_at_the_third_step)
    started = time.monotonic()
    assert run_script(SCRIPT, tmp_path / "out", pickled_data, [TINY], monkeypatch) == 0
    wakers[0].wait()
    assert time.monotonic() - started > 2  # it did stop
    (entry,) = entries(tmp_path / "out").values()
    assert entry["history"][0]["seconds"] < 1.5


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_the_test_pass_loses_nothing(presses, pickled_data, tmp_path,
                                                   monkeypatch, capsys):
    """Ctrl-C while epoch 2 is being scored: the epoch is saved before the test pass; one
    press waits for it (and says so), two stop at once; the rerun ends as if uninterrupted."""
    configs = [dict(TINY, num_epochs=3, batch_size=16)]
    reference = tmp_path / "reference"
    assert run_script("Dropout_regularization", reference, pickled_data, configs, monkeypatch) == 0
    real_measure = train.measure  # an epoch's end: the test pass, and the training sample's
    calls = []

    def press_ctrl_c_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(train, "measure", press_ctrl_c_in_epoch_2)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_script("Dropout_regularization", out, pickled_data, configs, monkeypatch) == 130
    error = capsys.readouterr().err
    assert "waiting for the test pass of epoch 2" in error
    assert "Traceback" not in error
    assert "To resume, run the same command:\n  python Dropout_regularization.py" in error
    progress = torch.load(checkpoint_of(out), weights_only=True)["progress"]
    assert progress["epoch"] == 2  # the interrupted epoch is not lost

    monkeypatch.setattr(train, "measure", real_measure)
    assert run_script("Dropout_regularization", out, pickled_data, configs, monkeypatch) == 0

    def finished(folder):
        (entry,) = json.loads((folder / "training_result.json").read_text())["configs"]
        return [{k: v for k, v in record.items() if k != "seconds"}
                for record in entry["history"]], torch.load(folder / "config_1.pth")

    (history, weights), (expected_history, expected_weights) = finished(out), finished(reference)
    assert history == expected_history
    assert all(torch.equal(weights[key], expected_weights[key]) for key in weights)


def test_the_resume_hint_names_the_script_that_ran_and_quotes_paths(
        pickled_data, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "my copy.py"
    shutil.copy(Path(importlib.import_module(SCRIPT).__file__), copy)
    spec = importlib.util.spec_from_file_location("my_copy", copy)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(train, "train_config", lambda *args, **kwargs: (_ for _ in ()).throw(
        KeyboardInterrupt))  # a second Ctrl-C
    out = tmp_path / "out with space"
    assert run_script(script, out, pickled_data, [A], monkeypatch) == 130
    captured = capsys.readouterr()
    assert "my copy.py: 300 training and 100 test images" in captured.out
    command = captured.err.split("To resume, run the same command:\n")[1]
    words = shlex.split(command.strip())
    assert Path(words[1]).resolve() == copy and words[words.index("--out") + 1] == str(out)


# ---- a stop before training, between configs, while the views are rebuilt ----

def test_ctrl_c_while_the_images_are_decoded_is_one_line(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load_cifar10", interrupted)
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, None, None) == 130
    assert "Stopped by Ctrl-C before training started" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sigterm_while_the_images_are_decoded_is_one_line(pickled_data, tmp_path, monkeypatch,
                                                          capsys):
    """SIGTERM (a scheduler's kill, `kill PID`) while the data loads: the same one line as
    Ctrl-C, with the signal's name and its exit status, instead of a silent death."""
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this sleep
        raise AssertionError("SIGTERM did not stop the load")

    monkeypatch.setattr(data, "load_cifar10", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, None, None) == 143
    assert "Stopped by SIGTERM before training started" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # handed back after the run


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_views_are_rebuilt_before_training_is_one_true_line(
        signum, status, pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    real_draw = plots.draw_views

    def signalled(*args, **kwargs):  # the PNGs redrawn before training: a signal comes
        signal.raise_signal(signum)
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(plots, "draw_views", signalled)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [dict(A, lr=0.05)], monkeypatch) == status
    message = capsys.readouterr().err
    assert message.strip() == f"Stopped by {'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'} " \
        f"before training started; nothing was trained."
    monkeypatch.setattr(plots, "draw_views", real_draw)
    assert run_script(SCRIPT, out, pickled_data, [dict(A, lr=0.05)], monkeypatch) == 0
    assert len(finished_runs(out)) == 2


def test_configs_by_their_printed_label_and_a_stop_as_a_config_ends(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real_measure = train.measure

    def ctrl_c_in_the_last_test_pass(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(train, "measure", ctrl_c_in_the_last_test_pass)
    assert run_script("L2_regularization", out, pickled_data, [TINY, dict(TINY, lr=0.02)],
                      monkeypatch, "--configs", "config_1,config_2") == 130
    captured = capsys.readouterr()
    assert "Stopped by SIGINT after config_1 ended; the next configs have not started" in \
        captured.err
    assert "config_2:" not in captured.out and not list(out.glob("runs/config_2-*"))
    assert not list(out.glob("runs/*/checkpoint.ckpt"))


def test_a_checkpoint_is_never_carried_on_in_other_arithmetic_and_blocks_nothing(
        pickled_data, tmp_path, monkeypatch, capsys):
    """Another precision is another run: config_1's fp32 checkpoint is neither resumed in bf16
    nor in the way of any config; it stays, and fp32 carries it on later."""
    out = tmp_path / "out"
    configs = [dict(TINY, num_epochs=2), TINY]
    with monkeypatch.context() as patch:
        patch.setattr(train, "measure", lambda *args, **kwargs: (
            signal.raise_signal(signal.SIGINT), ({"test_accuracy": 10.0,
                                                  "train_accuracy_eval": 10.0}, None))[1])
        assert run_script("L2_regularization", out, pickled_data, configs,
                          patch) == 130  # an fp32 checkpoint
    checkpoint = checkpoint_of(out)
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch, "--amp",
                      "on") == 0
    printed = capsys.readouterr().out
    assert "; bf16 autocast; output" in printed and "resuming" not in printed
    assert "config_1 epoch 1/2" in printed and "config_2 epoch 1/1" in printed
    assert checkpoint.is_file() and checkpoint_of(out) != checkpoint
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch, "--configs",
                      "1") == 0
    assert "config_1: resuming from its checkpoint after epoch 1" in capsys.readouterr().out


# ---- what a kill leaves behind: done by the next run, never in its way ----

def test_what_a_kill_left_undone_is_done_by_the_next_run(pickled_data, tmp_path, monkeypatch,
                                                         rendered):
    out = tmp_path / "out"
    configs = [dict(TINY, num_epochs=2)]
    real_measure = train.measure
    monkeypatch.setattr(train, "measure", lambda *args, **kwargs: (
        signal.raise_signal(signal.SIGINT), real_measure(*args, **kwargs))[1])
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 130
    checkpoint = checkpoint_of(out)
    saved = checkpoint.read_bytes()
    monkeypatch.setattr(train, "measure", real_measure)
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    # killed after writing the run's record, before the views and the checkpoint's removal,
    # and once in the middle of writing a checkpoint:
    (out / "loss.png").unlink()
    checkpoint.write_bytes(saved)
    cut = checkpoint.parent / ".checkpoint.ckpt.0123abcd.tmp"
    cut.write_bytes(b"a cut write")
    (out / ".my-notes.tmp").write_text("not the kit's")
    # killed between a new run's folder and its first record, before and while writing it:
    (out / "runs" / "config_1-s0-20261206-101500-0a0a").mkdir()
    (out / "runs" / "config_1-s0-20261206-101501-0b0b").mkdir()
    (out / "runs" / "config_1-s0-20261206-101501-0b0b" / ".run.json.0123abcd.tmp").write_text("{")
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert len(list((out / "runs").iterdir())) == 1  # its one run; no empty folder stays
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not checkpoint.exists()
    assert (out / ".my-notes.tmp").exists()
    assert not cut.exists()  # a checkpoint's size, in a run that nothing would clean again


def test_an_output_folder_moved_while_it_trains_is_not_made_again(pickled_data, tmp_path,
                                                                 monkeypatch, capsys):
    """Moved in the middle of an epoch: the run stops at its next write, saying it cannot write
    there, instead of rebuilding the old path; the same command with the new --out carries on."""
    out, moved = tmp_path / "out", tmp_path / "moved"
    real_take_turn = train.rt.take_turn

    def move_once(runtime):
        if out.exists():
            out.rename(moved)
        real_take_turn(runtime)
    monkeypatch.setattr(train.rt, "take_turn", move_once)
    assert run_script("L2_regularization", out, pickled_data, [TINY], monkeypatch) == 1
    assert "error: cannot write to " in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setattr(train.rt, "take_turn", real_take_turn)
    assert run_script("L2_regularization", moved, pickled_data, [TINY], monkeypatch) == 0
    assert [entry["status"] for entry in entries(moved).values()] == ["finished"]
    assert len(list((moved / "runs").iterdir())) == 1  # the moved run, carried on


def killed_as_the_first_run_finishes(out, data_dir, configs):
    """Run ``configs``, killed right after the first run's record says finished (its views,
    and its checkpoint's removal, still to come)."""
    real_replace = os.replace

    def killed(source, target, *args, **kwargs):
        real_replace(source, target, *args, **kwargs)
        if Path(target).name == "run.json" and \
                json.loads(Path(target).read_text())["status"] == "finished":
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", killed)
        with pytest.raises(Killed):
            run_script(SCRIPT, out, data_dir, configs, patch)
    (stale,) = out.glob("runs/*/checkpoint.ckpt")
    return stale


def test_a_kill_as_a_config_ends_leaves_nothing_that_is_never_redone(
        pickled_data, tmp_path, monkeypatch, capsys, rendered):
    out = tmp_path / "out"
    stale = killed_as_the_first_run_finishes(out, pickled_data, [A])
    assert not (out / "examples.png").exists()
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert "per_class_accuracy" in entries(out)[("config_1", 0)]
    assert (out / "examples.png").is_file() and (out / "config_1.pth").is_file()
    assert not stale.exists()


def test_a_finished_runs_checkpoint_left_by_a_kill_goes_when_its_config_is_edited(
        pickled_data, tmp_path, monkeypatch, capsys):
    """Killed after config_1's record said finished, before its checkpoint was removed; then
    config_1 edited: its run is no longer shown, and that stale checkpoint must not stay in
    it for ever (a ResNet's is 90 MB, and nothing would ever remove it there)."""
    out = tmp_path / "out"
    stale = killed_as_the_first_run_finishes(out, pickled_data, [A])
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [dict(A, lr=0.05)], monkeypatch) == 0
    assert "config_1 differs from its earlier results: lr 0.01 -> 0.05; it trains anew" in \
        capsys.readouterr().out
    assert (stale.parent / "weights.pth").is_file()
    assert not list(out.glob("runs/*/checkpoint.ckpt"))


def test_a_process_killed_while_it_holds_the_store_leaves_no_lock_behind(
        pickled_data, tmp_path, monkeypatch):
    """Processes share a folder (tests/test_run.py); the locks are the kernel's, so a kill
    -9 while one holds the store leaves nothing that blocks the next run."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cifarkit import store\n"
         "with store.store_lock(sys.argv[1], create=True):\n    print('locked', flush=True); time.sleep(600)",
         str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert store.lock(out / "runs", blocking=False) is None  # held
    holder.kill()  # kill -9: no chance to clean anything up
    holder.wait()
    handle = store.lock(out / "runs", blocking=False)
    assert handle is not None
    os.close(handle)
    assert run_script("L2_regularization", out, pickled_data, [TINY], monkeypatch) == 0


def test_kill_9_during_the_live_refresh_leaves_whole_files(pickled_data, tmp_path):
    """Many short epochs, so the JSON and PNGs are rewritten all the time; kill -9 at spread
    moments, and every file on disk is whole (a live JSON shows the run as running)."""
    out = tmp_path / "out"
    code = ("import sys, Original_version_model_multiGPU as s; "
            "s.CONFIGS = [dict(num_epochs=400, lr=0.01, momentum=0.9, batch_size=100)]; "
            "sys.exit(s.main(sys.argv[1:]))")
    seen_running = False
    for delay in (0.0, 1.1):  # at once, and about an epoch later
        process = subprocess.Popen([sys.executable, "-c", code, "--data-dir", str(pickled_data),
                                    "--out", str(out), "--device", "cpu"], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        epoch_lines = 0
        while epoch_lines < 2:  # the first epoch's files are written before the second ends
            epoch_lines += "/400: loss" in process.stdout.readline()
            assert process.poll() is None
        time.sleep(delay)
        process.kill()
        process.wait()
        results = json.loads((out / "training_result.json").read_text())
        (entry,) = results["configs"]
        seen_running |= entry["status"] == "running" and len(entry["history"]) >= 1
        for png in ("loss.png", "train_accuracy.png", "test_accuracy.png"):
            with Image.open(out / png) as image:
                image.verify()
        # kill -9 can leave a temporary file of an unfinished write, and nothing else
        assert all(path.name.endswith(".tmp") for path in out.glob(".*"))
    assert seen_running


# ---- kill -9 at the file operations of an edited run (strace's syscall injection) ----

FILE_CALLS = ("rename", "link", "unlink", "write")  # each with its *at variants
STRACE = shutil.which("strace")


def driver(which, data_dir, out, strace=()):
    return subprocess.run([*strace, sys.executable, str(REPO / "tests" / "store_driver.py"),
                           which, "--data-dir", str(data_dir), "--out", str(out), "--device",
                           "cpu"], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)


def calls_of(kind):
    return {"rename": "rename,renameat,renameat2", "link": "link,linkat",
            "unlink": "unlink,unlinkat", "write": "write"}[kind]


def count_calls(data_dir, out, tmp_path):
    """How many times the edited run (two configs, one of them changed) makes each call."""
    log = tmp_path / "strace.log"
    result = driver("after", data_dir, out, [STRACE, "-f", "-qq", "-o", str(log), "-e",
                                             "trace=" + ",".join(calls_of(kind) for kind in
                                                                 FILE_CALLS)])
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    return {kind: sum(1 for line in lines if line.split(None, 1)[-1].split("(")[0]
                      in calls_of(kind).split(",")) for kind in FILE_CALLS}


def kill_points():
    """(call, n): every rename, link and unlink, and some writes, with KILL_SWEEP=all;
    one otherwise, at the run record's rename as its first config finishes (the suite's
    time: the others run with KILL_SWEEP=all)."""
    return [("rename", 3)]


def check_after_rerun(out, data_dir):
    """What a user relies on after the rerun: every finished run reloads to its recorded
    accuracy, and every view is the run it names (including the PNGs)."""
    assert_views_are_the_runs(out, data_dir)
    results = json.loads((out / RESULTS).read_text())
    assert [(entry["id"], entry["config"]["lr"], entry["status"]) for entry in
            results["configs"]] == [("config_1", 0.01, "finished"), ("config_2", 0.05, "finished")]
    for record_path in out.glob("runs/*/run.json"):
        record = json.loads(record_path.read_text())
        if record["status"] == "finished":
            assert not (record_path.parent / "checkpoint.ckpt").exists()
    for name in ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png"):
        assert (out / name).stat().st_mtime >= (out / RESULTS).stat().st_mtime - 1
    assert not list(out.glob(".*.tmp")) and not list(out.glob("runs/*/.*.tmp"))  # tidied


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_kill_9_at_file_operations_of_an_edited_run_then_the_same_command(pickled_data, tmp_path):
    base = tmp_path / "base"
    assert driver("before", pickled_data, base).returncode == 0
    sweep = os.environ.get("KILL_SWEEP") == "all"
    if sweep:
        counts = count_calls(pickled_data, shutil.copytree(base, tmp_path / "count"), tmp_path)
        points = [(kind, n) for kind in FILE_CALLS
                  for n in range(1, counts[kind] + 1, 1 if kind != "write" else 7)]
    else:
        points = kill_points()
    killed = 0
    for kind, n in points:
        out = shutil.copytree(base, tmp_path / f"{kind}-{n}")
        before = finished_runs(out)
        result = driver("after", pickled_data, out, [STRACE, "-f", "-qq", "-o", "/dev/null",
                                                 "-e", f"inject={calls_of(kind)}:signal=KILL:"
                                                       f"when={n}"])
        killed += result.returncode != 0
        assert_still_there(before, out)
        rerun = driver("after", pickled_data, out)
        assert rerun.returncode == 0, (kind, n, rerun.stderr[-2000:])
        assert "Traceback" not in rerun.stderr
        assert_still_there(before, out)
        check_after_rerun(out, pickled_data)
        shutil.rmtree(out)
    assert killed >= max(1, len(points) - 1)  # each was reached (the last write may not be)
    print(f"{len(points)} kill points, {killed} killed")
