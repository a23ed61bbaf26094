"""Faults an adversarial pass found where a folder's earlier results meet an edited CONFIGS,
a kill, a full disk or a user's own files (issue "Results that can never be separated from
their weights"), kept for the run store: each ends with the run doing what the user meant, or
with one line before training that names the problem and a remedy that works. Nothing is
lost, no advice loops, no traceback, no hang."""
import importlib
import importlib.util
import io
import json
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

from cifarkit import config, plots, train
from conftest import Killed, checkpoint_of, finished_runs, run_script, with_checkpoint

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
# runs out of memory in its second epoch (with_checkpoint): its run keeps the checkpoint of
# epoch 1
D = {"name": "d", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 30}
SCRIPT = "L2_regularization"
RESULTS = "training_result.json"


pytestmark = pytest.mark.usefixtures("unrendered")


def entries(out):
    return {(entry["id"], entry["seed"]): entry
            for entry in json.loads((out / RESULTS).read_text())["configs"]}


def test_a_diverged_config_with_a_lower_lr_trains_again(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [dict(B, lr=1e30)], monkeypatch) == 1
    assert entries(out)[("config_1", 0)]["status"] == "diverged"
    assert run_script(SCRIPT, out, pickled_data, [B], monkeypatch) == 0  # was "cannot write ...: rerun"
    assert entries(out)[("config_1", 0)]["status"] == "finished"
    statuses = sorted(json.loads(files["run.json"])["status"]
                      for files in finished_runs(out).values())
    assert statuses == ["diverged", "finished"]  # the diverged run stays
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [dict(B, lr=1e30)], monkeypatch) == 1  # shown again
    printed = capsys.readouterr().out
    assert "config_1: already diverged in" in printed and " epoch 1/1" not in printed
    assert run_script(SCRIPT, out, pickled_data, [dict(B, lr=1e30)], monkeypatch, "--restart") == 1
    captured = capsys.readouterr()  # trained again, and it diverged again
    assert "config_1: the loss became NaN or infinite" in captured.err
    assert "cannot write" not in captured.err
    assert len(finished_runs(out)) == 3


def test_the_same_images_under_another_path_spelling_retrain_nothing(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    before = finished_runs(out)
    monkeypatch.chdir(pickled_data.parent)
    capsys.readouterr()
    assert run_script(SCRIPT, out, Path("..") / pickled_data.parent.name / pickled_data.name, [A],
               monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: already finished" in printed and "differs" not in printed
    assert finished_runs(out) == before


def test_an_edited_normalization_never_resumes_or_keeps_a_result(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with_checkpoint(out, pickled_data, [A, D])
    checkpoint = checkpoint_of(out, "config_2")
    assert checkpoint.is_file()
    script = importlib.import_module(SCRIPT)
    monkeypatch.setattr(script, "NORMALIZATION", ((0.4, 0.5, 0.6), (0.2, 0.2, 0.2)))
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, D], monkeypatch) == 0
    printed = capsys.readouterr().out
    for label in ("config_1", "config_2"):
        assert (f"{label} differs from its earlier results: the data (normalization "
                f"[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]] -> [[0.4, 0.5, 0.6], [0.2, 0.2, 0.2]]); "
                f"it trains anew") in printed
    assert "resuming" not in printed and "already finished" not in printed
    assert checkpoint.is_file()  # the other normalization's run keeps its checkpoint
    assert checkpoint_of(out, "config_2") != checkpoint


@pytest.mark.parametrize("blocker", ["training_result.json", "config_2.pth", "dangling link"])
def test_something_named_like_a_kit_file_is_refused_before_training(
        blocker, pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    if blocker == "dangling link":
        out.mkdir()
        (out / "runs").symlink_to(tmp_path / "unmounted-scratch")
    else:
        (out / blocker).mkdir(parents=True)
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "epoch" not in message
    if blocker == "dangling link":
        assert "unmounted-scratch, which does not exist" in message
    else:
        assert f"{out / blocker} is in the way of a file or folder the kit writes" in message
    assert not (tmp_path / "unmounted-scratch").exists() and not list(out.glob("runs/*"))


def test_an_unfinished_seed_outside_seeds_does_not_fail_the_run(pickled_data, tmp_path,
                                                                monkeypatch):
    out = tmp_path / "out"
    real_loss, steps = torch.nn.functional.cross_entropy, []

    def out_of_memory_after_seed_0(*args, **kwargs):  # seed 0: 10 steps
        steps.append(1)
        if len(steps) > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.functional, "cross_entropy", out_of_memory_after_seed_0)
        assert run_script(SCRIPT, out, pickled_data, [A], patch, "--seeds", "2") == 1
    assert entries(out)[("config_1", 1)]["status"] == "out_of_memory"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0  # was 1
    assert entries(out)[("config_1", 1)]["status"] == "out_of_memory"  # still shown


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


def test_an_unreadable_checkpoint_is_not_called_damaged(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    out = tmp_path / "out"
    with_checkpoint(out, pickled_data, [D])
    checkpoint = checkpoint_of(out)
    real_load = torch.load

    def permission_denied(path, *args, **kwargs):
        if Path(path) == checkpoint:
            raise PermissionError(13, "Permission denied", str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", permission_denied)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [D], monkeypatch) == 2
    message = capsys.readouterr().err
    assert f"{checkpoint}: cannot be read (Permission denied)" in message
    assert "damaged" not in message and "chmod u+r" in message
    assert checkpoint.is_file()


@pytest.mark.parametrize("fault", ["closed pipe", "full device", "ASCII only"])
def test_a_console_that_fails_never_stops_training(fault, pickled_data, tmp_path,
                                                   monkeypatch):
    class Failing(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe") if fault == "closed pipe" else \
                OSError(28, "No space left on device")

    console = (io.TextIOWrapper(io.BytesIO(), encoding="ascii") if fault == "ASCII only"
               else Failing())
    monkeypatch.setattr(sys, "stdout", console)
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch, "--seeds", "2") == 0  # "±" in the summary
    assert {entry["status"] for entry in entries(out).values()} == {"finished"}


def full_disk_for(kind):
    """torch.save that fails as on a full disk for checkpoints (``kind`` "checkpoint") or for
    the weights ("weights"), as torch says it."""
    real_save = torch.save

    def save(state, file, *args, **kwargs):
        if ("format" in state) == (kind == "checkpoint"):
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        return real_save(state, file, *args, **kwargs)

    return save


def test_the_disk_filling_between_checkpoint_and_weights_is_one_line(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_disk_for("weights"))
        assert run_script(SCRIPT, out, pickled_data, [A], patch) == 1
    message = capsys.readouterr().err
    assert message.startswith("error: cannot write to") and "Traceback" not in message
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    assert "config_1: resuming from its checkpoint after epoch 1" in capsys.readouterr().out
    assert (out / "config_1.pth").is_file() and len(finished_runs(out)) == 1


def test_a_full_scratch_disk_behind_runs_is_named(pickled_data, tmp_path, monkeypatch, capsys):
    import tempfile

    out, scratch = tmp_path / "out", Path(tempfile.mkdtemp(dir="/dev/shm"))
    out.mkdir()
    (out / "runs").symlink_to(scratch)
    assert scratch.stat().st_dev != out.stat().st_dev  # /dev/shm: another file system
    try:
        with monkeypatch.context() as patch:
            patch.setattr(torch, "save", full_disk_for("checkpoint"))
            assert run_script(SCRIPT, out, pickled_data, [A], patch) == 1
        message = capsys.readouterr().err
        assert f"error: cannot write to {out} (or to {scratch}, another disk, which " \
               f"runs/ links to)" in message
    finally:
        shutil.rmtree(scratch)


def test_a_disk_mounted_at_the_old_checkpoints_folder_is_never_removed(pickled_data, tmp_path,
                                                                       monkeypatch):
    """A scratch disk mounted at OUT/checkpoints (where the kit before the store kept them),
    empty now: taking the folder into the store leaves its mount point, as it leaves a link
    (removing it failed with 'Device or resource busy' and stopped every run)."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    real_is_mount = Path.is_mount
    monkeypatch.setattr(Path, "is_mount", lambda path: path == out / "checkpoints"
                        or real_is_mount(path))
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    assert (out / "checkpoints").is_dir() and not any((out / "checkpoints").iterdir())


def test_an_unreadable_class_folder_is_named(folder_data, tmp_path, monkeypatch, capsys):
    real_iterdir = Path.iterdir

    def denied(self):
        if self.name == "cat" and self.parent.name == "train":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    assert run_script(SCRIPT, tmp_path / "out", folder_data, [A], monkeypatch) == 2
    message = capsys.readouterr().err
    assert f"{folder_data / 'train' / 'cat'}: cannot be read (Permission denied)" in message


def test_an_over_long_out_is_refused_in_one_line(pickled_data, tmp_path, monkeypatch, capsys):
    assert run_script(SCRIPT, tmp_path / ("x" * 300) / "out", pickled_data, [A], monkeypatch) == 2
    message = capsys.readouterr().err
    assert "File name too long" in message and message.count("\n") == 1


@pytest.mark.parametrize("odd", ["deeply nested", "named pipe"])
def test_a_users_odd_json_in_the_folder_is_left_alone(odd, pickled_data, tmp_path,
                                                      monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    if odd == "named pipe":
        os.mkfifo(out / "stream.json")
    else:
        (out / "mine.json").write_text("[" * 100000 + "]" * 100000)

    def hung(signum, frame):  # not an OSError (as TimeoutError is): nothing may catch it
        raise Killed("the run hung on the user's file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
        assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0  # with earlier results
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if odd == "named pipe":
        assert (out / "stream.json").is_fifo()
    else:
        assert (out / "mine.json").read_text() == "[" * 100000 + "]" * 100000


def test_a_name_or_a_reported_figure_edited_retrains_nothing_and_is_redrawn(
        pickled_data, tmp_path, monkeypatch, capsys, rendered):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    before, weights = finished_runs(out), (out / "config_1.pth").read_bytes()
    drawn = (out / "loss.png").read_bytes()
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [dict(A, name="first", reported_accuracy=60.0), B],
               monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: name 'a' -> 'first', reported_accuracy '(unset)' -> 60.0 (a label: its " \
           "results are kept)" in printed
    assert "config_1: already finished" in printed and " epoch 1/1" not in printed
    assert (out / "loss.png").read_bytes() != drawn  # its legend names config_1 first
    assert (out / "config_1.pth").read_bytes() == weights
    assert entries(out)[("config_1", 0)]["config"]["name"] == "first"
    assert finished_runs(out) == before  # the runs themselves are not rewritten


def test_a_key_added_to_the_kit_with_a_default_keeps_finished_results(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    before = finished_runs(out)
    monkeypatch.setitem(config.TRAINING_KEYS, "grad_clip",
                        ("float", lambda value: value >= 0, "0 or more"))
    monkeypatch.setitem(config.DEFAULTS, "grad_clip", 0.0)
    monkeypatch.setitem(config.NEUTRAL, "grad_clip", 0.0)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: already finished" in printed and "differs" not in printed
    assert finished_runs(out) == before


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


def test_weights_deleted_by_hand_are_retrained_not_called_finished(pickled_data, tmp_path,
                                                                     monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    run_dir = out / entries(out)[("config_2", 0)]["run"]
    (run_dir / "weights.pth").unlink()  # the run's own (config_2.pth, a hard link, stays)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert f"config_2: its weights {run_dir / 'weights.pth'} are missing" in printed
    assert "config_2 epoch 1/1" in printed and "config_1 epoch" not in printed
    new_run = out / entries(out)[("config_2", 0)]["run"]
    assert new_run != run_dir
    assert (out / "config_2.pth").read_bytes() == (new_run / "weights.pth").read_bytes()


def test_a_changed_config_not_selected_is_never_shown_with_the_weights_of_another(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    before = finished_runs(out)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch, "--configs", "1") == 0
    printed = capsys.readouterr().out
    assert "config_2 differs from its earlier results: lr 0.02 -> 0.05" in printed
    assert "config_2 epoch" not in printed
    shown = entries(out)
    assert ("config_2", 0) not in shown or shown[("config_2", 0)]["config"]["lr"] == 0.02
    assert finished_runs(out) == before
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    assert "config_2 epoch 1/1" in capsys.readouterr().out
    assert entries(out)[("config_2", 0)]["config"]["lr"] == 0.05


def test_a_folder_moved_since_its_last_run_is_named_where_it_is_now(pickled_data, tmp_path,
                                                                   monkeypatch, capsys):
    """Trained with `--out .`, the folder then moved (mv out moved): the lines name where
    the runs are now (not the old path, nor a path relative to the first run's folder)."""
    out, moved = tmp_path / "out", tmp_path / "moved"
    out.mkdir()
    with monkeypatch.context() as patch:
        patch.chdir(out)
        assert run_script(SCRIPT, Path("."), pickled_data, [A], patch) == 0
    out.rename(moved)
    capsys.readouterr()
    assert run_script(SCRIPT, moved, pickled_data, [dict(A, lr=0.05)], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert f"(the run it replaces stays in {moved}/runs/config_1-a-" in printed
    assert str(out) not in printed.replace(str(moved), "")
    for entry in entries(moved).values():
        assert (moved / entry["run"] / "run.json").is_file()


def test_a_users_file_where_a_weights_view_goes_is_kept(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    (out / "config_2.pth").write_bytes(b"my own file")  # no run's weights
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [B, A], monkeypatch) == 0  # a's results become config_2's
    printed = capsys.readouterr().out
    assert "config_1 is config_2 now (the same config, moved in CONFIGS)" in printed
    assert (f"{out / 'config_2.pth'} is not the weights of any run in {out / 'runs'}/ (a file "
            f"of your own?): left as it is") in printed
    assert (out / "config_2.pth").read_bytes() == b"my own file"
    a = entries(out)[("config_2", 0)]
    assert a["config"]["name"] == "a" and (out / a["weights"]).is_file()
    assert a["weights"] == f"{a['run']}/weights.pth"


def test_an_edited_model_class_and_one_config_selected_is_no_traceback(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    script = importlib.import_module(SCRIPT)
    lenet = type(script.build_model({}))  # the script's model class, whatever its name

    class Wider(lenet):  # fc2 84 -> 80: the earlier weights no longer fit
        def __init__(self):
            super().__init__()
            self.fc2, self.fc3 = torch.nn.Linear(120, 80), torch.nn.Linear(80, 10)

    monkeypatch.setattr(script, "build_model", lambda config: Wider())
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch, "--configs", "1") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "config_1 epoch 1/1" in captured.out
    assert "config_1 differs from its earlier results: the model; it trains anew" in \
        captured.out
    assert "config_2 epoch" not in captured.out


def test_a_garbage_checkpoint_in_a_finished_run_is_never_read(pickled_data, tmp_path,
                                                              monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    b = (out / "config_2.pth").read_bytes()
    garbage = out / entries(out)[("config_2", 0)]["run"] / "checkpoint.ckpt"
    garbage.write_bytes(b"garbage")
    before = finished_runs(out)
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [B, A], monkeypatch, "--configs", "2") == 0
    captured = capsys.readouterr()
    assert captured.err == "" and " epoch 1/1" not in captured.out
    assert (out / "config_1.pth").read_bytes() == b  # b's result went with its config
    assert not garbage.exists() and finished_runs(out) == before
