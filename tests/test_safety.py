"""A user's files are never moved, nothing trained is lost, and every bad input or signal
ends in one clear message instead of a traceback."""
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit import data, store, train
from cifarkit.results import save_json
from conftest import (REPO, checkpoint_of, finished_runs, run_command, run_script, write_image_folders,
                      write_pickled_batches)

TINY = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}


pytestmark = pytest.mark.usefixtures("unrendered")


def tree(folder):
    """Every file below ``folder`` with its content, to prove nothing moved or changed."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# ---- --restart trains new runs and touches nothing else ----

def test_restart_of_some_configs_trains_new_runs_and_touches_nothing_else(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    configs = [TINY, dict(TINY, lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    before, first = finished_runs(out), (out / "config_1.pth").read_bytes()
    mine = {"notes.txt": b"my notes", "my_model.pth": b"not the kit's",
            "figures/plot.png": b"mine", "checkpoints/config_1_seed0.bak.ckpt": b"a backup"}
    for name, content in mine.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(content)
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch, "--restart",
                      "--configs", "2") == 0
    printed = capsys.readouterr().out
    assert "config_2 epoch 1/1" in printed and "config_1 epoch" not in printed
    after = finished_runs(out)
    assert len(after) == 3 and {name: after[name] for name in before} == before
    assert (out / "config_1.pth").read_bytes() == first
    (entry,) = [entry for entry in json.loads((out / "training_result.json").read_text())[
        "configs"] if entry["id"] == "config_2"]
    assert Path(entry["run"]).name not in before  # config_2 shows its new run
    assert all((out / name).read_bytes() == content for name, content in mine.items())


@pytest.mark.parametrize("where", ["repository", "source folder", "data folder",
                                   "inside the data"])
def test_an_out_folder_that_belongs_to_something_else_is_refused(where, tmp_path, capsys):
    data_dir = write_pickled_batches(tmp_path / "data")
    out = {"repository": tmp_path / "project", "source folder": tmp_path / "code",
           "data folder": data_dir,
           "inside the data": data_dir / "cifar-10-batches-py"}[where]
    out.mkdir(exist_ok=True)
    if where == "repository":
        (out / ".git").mkdir()
        (out / "README.md").write_text("a project")
    if where == "source folder":
        (out / "train_me.py").write_text("print('mine')")
    before = tree(tmp_path)
    assert run_script("L2_regularization", out, data_dir, None, None, "--restart", "--epochs",
                      "1") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --out ")
    assert ("inside it" in error) if "data" in where else ("did not write" in error)
    assert tree(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_out_folder_on_a_virtual_file_system_is_refused_as_such(pickled_data, capsys):
    """/proc looks writable to root, and has "0 MiB free": say what it is instead."""
    assert run_script("L2_regularization", "/proc/cifar-kit-results", pickled_data, None, None,
                      "--epochs", "1") == 2
    error = capsys.readouterr().err
    assert "not on a disk (a virtual file system such as /proc or /sys)" in error
    assert "MiB free" not in error


# ---- locks: a killed process leaves none behind ----

def test_a_process_killed_while_it_holds_the_store_leaves_no_lock_behind(
        pickled_data, tmp_path, monkeypatch):
    """Processes share a folder (tests/test_store.py); the locks are the kernel's, so a kill
    -9 while one holds the store leaves nothing that blocks the next run."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cifarkit import store\n"
         "with store.store_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)",
         str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert store.lock(out / "runs", blocking=False) is None  # held
    holder.kill()  # kill -9: no chance to clean anything up
    holder.wait()
    handle = store.lock(out / "runs", blocking=False)
    assert handle is not None
    os.close(handle)
    assert run_script("L2_regularization", out, pickled_data, [TINY], monkeypatch) == 0


# ---- numpy numbers in CONFIGS ----

def test_numpy_numbers_in_configs_train_save_and_resume(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    configs = [{"num_epochs": np.int64(1), "lr": np.float32(0.01), "momentum": np.float64(0.9),
                "batch_size": np.int64(32), "nesterov": np.bool_(True)}]
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    assert entry["config"]["batch_size"] == 32 and entry["config"]["nesterov"] is True
    assert entry["config"]["lr"] == pytest.approx(0.01)
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert len(finished_runs(out)) == 1


# ---- Ctrl-C at every phase ----

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


# ---- bad input: one line, exit 2, nothing written ----

@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "argument --seed: -1 must be between 0 and 4294967295"),
    (["--seed", "99999999999"], "must be between 0 and 4294967295"),
    (["--seed", "4294967295", "--seeds", "2"], "the last seed would pass 4294967295"),
])
def test_seeds_out_of_numpys_range_are_refused(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_script("L2_regularization", tmp_path / "out", None, None, None, *flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("configs, message", [
    ([dict(TINY, name="2"), TINY], "config_1: 'name' '2' is a number"),
    ([dict(TINY, name="a,b")], "must not start or end with a space or hold a comma"),
    (dict(TINY), "CONFIGS must be a list of config dicts"),
    ([dict(TINY, lr=float("nan"))], "config_1: 'lr' must be a finite number"),
    ([dict(TINY, lr=1e300)], "config_1: 'lr' must be a finite number below 3.4e+38"),
    ([dict(TINY, lr=10**400)], "config_1: 'lr' must be a finite number"),
    ([dict(TINY, name="config_2"), TINY], "'config_2' is a number or a config's number"),
    ([dict(TINY, name="a\nb")], "must not start or end with a space or hold a comma"),
])
def test_configs_that_would_mislead_are_refused(configs, message, pickled_data, tmp_path,
                                                monkeypatch, capsys):
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, configs,
                      monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


HAND_EDITS = ["entry without status", "configs not a list", "a list",
              ("final_test_accuracy", None), ("train_seconds", "abc"), ("status", "diverged"),
              ("status", "whatever")]


def test_a_hand_edited_results_json_is_kept_aside_and_the_run_goes_on(
        pickled_data, tmp_path, monkeypatch, capsys):
    """The results JSON is a view of the runs: whatever was done to it by hand (a field
    removed, a value of the wrong kind, diverged without diverged_at), the next run keeps the
    edited file aside, retrains nothing and writes the view anew."""
    out = tmp_path / "out"
    configs = [TINY, dict(TINY, lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    path = out / "training_result.json"
    shown = json.loads(path.read_text())["configs"]
    for edit in HAND_EDITS:
        results = json.loads(path.read_text())
        if edit == "entry without status":
            del results["configs"][0]["status"]
        elif edit == "configs not a list":
            results["configs"] = {"config_1": results["configs"][0]}
        elif edit == "a list":
            results = [results]
        else:
            results["configs"][0][edit[0]] = edit[1]
        path.write_text(json.dumps(results))
        edited = path.read_bytes()
        capsys.readouterr()
        assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch, "--configs",
                          "2") == 0, edit
        captured = capsys.readouterr()
        assert "config_2: already finished" in captured.out and captured.err == "", edit
        said = f"{path} could not be read (edited by hand?): kept as "
        assert said in captured.out, edit
        kept = captured.out.split(said)[1].split(",")[0]
        assert (out / kept).read_bytes() == edited, edit
        assert json.loads(path.read_text())["configs"] == shown, edit


def test_a_corrupt_checkpoint_never_suggests_unpickling_it(pickled_data, tmp_path,
                                                          monkeypatch, capsys):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # a second Ctrl-C as training starts: a run, unfinished
        patch.setattr(train, "train_config", lambda *args, **kwargs: (_ for _ in ()).throw(
            KeyboardInterrupt))
        assert run_script("L2_regularization", out, pickled_data, [TINY], patch) == 130
    checkpoint = checkpoint_of(out)
    checkpoint.write_bytes(b"PK\x03\x04 not a zip")
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [TINY], monkeypatch) == 2
    error = capsys.readouterr().err
    assert f"{checkpoint}: not a checkpoint written by this kit" in error
    assert "weights_only" not in error


# ---- messages say what differs ----

def test_the_line_for_a_changed_config_says_what_changed(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    out = tmp_path / "out"

    def rerun(*flags, configs=(TINY,)):
        capsys.readouterr()
        assert run_script("L2_regularization", out, pickled_data, list(configs), monkeypatch,
                          *flags) == 0
        return capsys.readouterr().out

    rerun("--subset", "100")
    assert ("config_1 differs from its earlier results: the data (train_images 100 -> 200, "
            "test_images 33 -> 67); it trains anew") in rerun("--subset", "200")
    assert "config_1 differs from its earlier results: num_epochs 1 -> 2; it trains anew" in \
        rerun("--subset", "200", "--epochs", "2")
    printed = rerun("--subset", "200", "--epochs", "2", configs=[dict(TINY, lr=0.02)])
    (line,) = [line for line in printed.splitlines() if "config_1 differs" in line]
    assert "config_1 differs from its earlier results: lr 0.01 -> 0.02; it trains anew" in line
    assert "num_epochs" not in line  # --epochs was typed, but only lr changed


def test_a_change_from_the_scripts_default_value_names_the_value_it_had(pickled_data, tmp_path,
                                                                       monkeypatch, capsys):
    """The Dropout script's default rate, 0.5, written out in a config, then changed."""
    out, config = tmp_path / "out", dict(TINY, dropout=0.5)
    for configs in ([config], [dict(config, dropout=0.3)]):
        capsys.readouterr()
        assert run_script("Dropout_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert "config_1 differs from its earlier results: dropout 0.5 -> 0.3" in \
        capsys.readouterr().out


def test_subset_too_large_for_one_class_names_the_number_typed_and_the_split(tmp_path,
                                                                             capsys):
    root = write_image_folders(tmp_path / "data")
    for path in sorted((root / "test" / "ship").iterdir())[2:]:
        path.unlink()  # 2 test images of class ship
    assert run_script("L2_regularization", tmp_path / "out", root, None, None, "--subset",
                      "290") == 2
    error = capsys.readouterr().err
    assert "--subset 290: needs 9 test images of class ship" in error
    assert "test set has only 2" in error


# ---- the download path's messages ----

def test_a_damaged_download_is_called_damaged_not_missing(tmp_path):
    batches = write_pickled_batches(tmp_path / "data") / "cifar-10-batches-py"
    (batches / "data_batch_2").write_bytes(b"damaged")
    with pytest.raises(data.DataError) as refused:
        data.load_cifar10(None, download_root=tmp_path / "data")  # the network is blocked
    message = str(refused.value)
    assert "a copy of CIFAR-10 is there but damaged (data_batch_1, data_batch_2" in message
    assert "Delete that folder to download again" in message


def test_a_failed_download_ends_with_the_command_to_run(tmp_path):
    result = run_command("L2_regularization.py", "--epochs", "1", "--device", "cpu",
                         cwd=tmp_path, env=dict(os.environ, https_proxy="http://127.0.0.1:9",
                                                http_proxy="http://127.0.0.1:9"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"  python {REPO / 'L2_regularization.py'} --data-dir DIR --epochs 1 --device cpu")
    assert list(tmp_path.iterdir()) == []  # no empty ./data left behind


# ---- files are readable by whoever the umask lets read them ----

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_output_files_follow_the_umask(umask, mode, tmp_path):
    previous = os.umask(umask)
    try:
        save_json({"a": 1}, tmp_path / "results.json")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == mode
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]  # no temp left


# ---- torchrun: a worker killed with kill -9 ----

def test_a_rank_killed_without_restarts_says_how_to_resume(pickled_data, tmp_path):
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


# ---- found by trying to break it (each failed before its fix) ----

def test_files_named_like_the_kits_but_not_its_results_are_never_overwritten(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pth").write_bytes(b"my precious model")
    (out / "loss.png").write_bytes(b"my plot")
    (out / "notes.txt").write_text("notes")
    assert run_script("Original_version_model", out, pickled_data, None, None, "--epochs", "1") == 0
    assert (f"{out / 'model.pth'} is not the weights of any run in {out / 'runs'}/ (a file "
            f"of your own?): left as it is") in capsys.readouterr().out
    assert (out / "model.pth").read_bytes() == b"my precious model"
    assert (out / "notes.txt").read_text() == "notes"
    assert any(path.read_bytes() == b"my plot" for path in out.rglob("*") if path.is_file())


def test_another_script_into_the_same_folder_keeps_the_first_ones_results(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [TINY], monkeypatch) == 0
    l2 = {name: (out / name).read_bytes() for name in ("training_result.json", "config_1.pth")}
    before = finished_runs(out)
    assert run_script("Original_version_model", out, pickled_data, None, None, "--epochs", "1") == 0
    assert all((out / name).read_bytes() == content for name, content in l2.items())
    after = finished_runs(out)
    assert len(after) == 2 and {name: after[name] for name in before} == before
    baseline = (out / "model.pth").read_bytes()
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [TINY], monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert (out / "model.pth").read_bytes() == baseline  # not a view of L2's to tidy away


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
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not checkpoint.exists()
    assert (out / ".my-notes.tmp").exists()
    assert not cut.exists()  # a checkpoint's size, in a run that nothing would clean again


@pytest.mark.parametrize("blocker", ["loss.png", "runs"])
def test_something_in_the_way_of_the_kits_files_is_refused_up_front(blocker, pickled_data,
                                                                    tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    if blocker == "loss.png":
        (out / blocker).mkdir()
    else:
        (out / blocker).write_text("a file")
    assert run_script("L2_regularization", out, pickled_data, None, None, "--epochs", "1") == 2
    assert f"{out / blocker} is in the way" in capsys.readouterr().err


def test_a_symlinked_runs_folder_is_kept(pickled_data, tmp_path, monkeypatch):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    (out / "runs").symlink_to(scratch)
    assert run_script("L2_regularization", out, pickled_data, [TINY, dict(TINY, lr=0.02)],
                      monkeypatch) == 0
    assert (out / "runs").is_symlink() and len(list(scratch.glob("*/weights.pth"))) == 2
    assert (out / "config_2.pth").exists()


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


def test_data_replaced_in_place_is_noticed(tmp_path, monkeypatch, capsys):
    data_dir = write_pickled_batches(tmp_path / "data")
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, data_dir, [TINY], monkeypatch) == 0
    batch = data_dir / "cifar-10-batches-py" / "data_batch_1"
    content = pickle.loads(batch.read_bytes())
    content["data"] = 255 - content["data"]  # the same path, the same counts, other pixels
    batch.write_bytes(pickle.dumps(content))
    capsys.readouterr()
    assert run_script("L2_regularization", out, data_dir, [TINY], monkeypatch) == 0
    assert ("config_1 differs from its earlier results: the data (other images, as many); it "
            "trains anew") in capsys.readouterr().out


def test_an_oversized_image_is_refused_before_it_is_decoded(tmp_path, capsys):
    from PIL import Image

    root = write_image_folders(tmp_path / "data")
    Image.new("RGB", (12000, 12000)).save(sorted((root / "train" / "cat").iterdir())[0])
    assert run_script("L2_regularization", tmp_path / "out", root, None, None, "--epochs", "1") == 2
    assert "a 12000x12000 RGB image; CIFAR-10 images are 32x32 RGB" in capsys.readouterr().err
