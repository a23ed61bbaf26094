"""Faults an adversarial pass found where a folder's earlier results meet an edited CONFIGS
(issue "Results that can never be separated from their weights"): each ends with the run
doing what the user meant, or with one line before training that names the problem and a
remedy that works. Nothing is lost, no advice loops, no traceback, no hang."""
import errno
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

from cifarkit import checkpoints, config, data, experiment, ledger, outputs, results, train
from cifarkit.errors import UserError
from cifarkit.results import save_json
from test_ledger import A, B, D, Killed, run, with_checkpoint

RESULTS = "training_result.json"


def entries(out):
    return {(entry["id"], entry["seed"]): entry
            for entry in json.loads((out / RESULTS).read_text())["configs"]}


def test_a_diverged_config_with_a_lower_lr_trains_again(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, dict(B, lr=1e30)], monkeypatch) == 1
    assert entries(out)[("config_2", 0)]["status"] == "diverged"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0  # was "cannot write ...: rerun"
    assert entries(out)[("config_2", 0)]["status"] == "finished"
    (earlier,) = out.glob("earlier-*")
    assert [entry["status"] for entry in json.loads((earlier / RESULTS).read_text())[
        "configs"]] == ["diverged"]
    assert run(out, pickled_data, [A, dict(B, lr=1e30)], monkeypatch) == 1
    capsys.readouterr()
    assert run(out, pickled_data, [A, dict(B, lr=1e30)], monkeypatch,
               "--restart", "--configs", "2") == 1  # trains it again, and it diverges again
    captured = capsys.readouterr()
    assert "--restart config_2: its earlier results are kept in" in captured.out
    assert "config_2: the loss became NaN or infinite" in captured.err
    assert "cannot write" not in captured.err


def test_another_configs_checkpoint_in_other_arithmetic_blocks_nothing(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with_checkpoint(out, pickled_data, [D, A])
    path = out / "checkpoints" / "config_1_seed0.ckpt"
    saved = torch.load(path, weights_only=True)
    saved["identity"]["precision"] = "bf16 autocast"  # as on a GPU
    torch.save(saved, path)
    capsys.readouterr()
    assert run(out, pickled_data, [D, A], monkeypatch, "--configs", "2") == 0
    assert run(out, pickled_data, [D, A], monkeypatch) == 2  # config_1 itself: refused
    message = capsys.readouterr().err
    assert "config_1: its checkpoint was trained in bf16 autocast" in message
    assert "--restart --configs 1" in message
    assert run(out, pickled_data, [D, A], monkeypatch, "--restart", "--configs", "1") == 0
    assert entries(out)[("config_1", 0)]["status"] == "finished"
    assert (out / "config_2.pth").is_file()


def test_restart_of_one_config_after_a_reorder_moves_only_its_results(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    a, b = ((out / name).read_bytes() for name in ("config_1.pth", "config_2.pth"))
    capsys.readouterr()
    assert run(out, pickled_data, [B, A], monkeypatch, "--restart", "--configs", "1") == 0
    printed = capsys.readouterr().out
    assert "config_1 epoch 1/1" in printed and "config_2 epoch" not in printed
    (earlier,) = out.glob("earlier-*")
    assert (earlier / "config_2.pth").read_bytes() == b  # b's old results, aside
    assert (out / "config_2.pth").read_bytes() == a  # a's, kept under its new number
    assert entries(out)[("config_2", 0)]["config"]["name"] == "a"


def test_the_same_images_under_another_path_spelling_retrain_nothing(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A], monkeypatch) == 0
    monkeypatch.chdir(pickled_data.parent)
    capsys.readouterr()
    assert run(out, Path("..") / pickled_data.parent.name / pickled_data.name, [A],
               monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert not list(out.glob("earlier-*"))


def test_an_edited_normalization_never_resumes_or_keeps_a_result(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with_checkpoint(out, pickled_data, [A, D])
    script = importlib.import_module("L2_regularization")
    monkeypatch.setattr(script, "NORMALIZATION", ((0.4, 0.5, 0.6), (0.2, 0.2, 0.2)))
    capsys.readouterr()
    assert run(out, pickled_data, [A, D], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "the data differs from the earlier run's (normalization" in printed
    assert "resuming" not in printed and "already finished" not in printed
    (earlier,) = out.glob("earlier-*")
    assert (earlier / "checkpoints" / "config_2_seed0.ckpt").is_file()


@pytest.mark.parametrize("blocker", ["training_result.json", "config_2.pth",
                                     "checkpoints/config_1_seed0.ckpt", "dangling link"])
def test_something_named_like_a_kit_file_is_refused_before_training(
        blocker, pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    if blocker == "dangling link":
        out.mkdir()
        (out / "checkpoints").symlink_to(tmp_path / "unmounted-scratch")
    else:
        (out / blocker).mkdir(parents=True)
    assert run(out, pickled_data, [A, B], monkeypatch) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "epoch" not in message
    if blocker == "dangling link":
        assert "unmounted-scratch, which does not exist" in message
    else:
        assert f"{out / blocker} is in the way of a file or folder the kit writes" in message


def test_an_unfinished_seed_outside_seeds_does_not_fail_the_run(pickled_data, tmp_path,
                                                                monkeypatch):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A], monkeypatch) == 0
    results = json.loads((out / RESULTS).read_text())
    other = dict(results["configs"][0], seed=1, status="out_of_memory", weights=None)
    results["configs"].append(other)
    save_json(results, out / RESULTS)
    assert run(out, pickled_data, [A], monkeypatch) == 0  # was 1


def test_the_resume_hint_names_the_script_that_ran_and_quotes_paths(
        pickled_data, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "my copy.py"
    shutil.copy(Path(importlib.import_module("L2_regularization").__file__), copy)
    spec = importlib.util.spec_from_file_location("my_copy", copy)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.CONFIGS = [A]
    monkeypatch.setattr(train, "train_config", lambda *args, **kwargs: (_ for _ in ()).throw(
        KeyboardInterrupt))  # a second Ctrl-C
    out = tmp_path / "out with space"
    assert script.main(["--data-dir", str(pickled_data), "--out", str(out), "--device",
                        "cpu"]) == 130
    captured = capsys.readouterr()
    assert "my copy.py: 300 training and 100 test images" in captured.out
    command = captured.err.split("To resume, run the same command:\n")[1]
    words = shlex.split(command.strip())
    assert Path(words[1]).resolve() == copy and words[words.index("--out") + 1] == str(out)


def killed_after_the_first_finished_entry(out, data_dir, configs):
    """Run ``configs``, killed right after the results JSON first says a config finished
    (its PNGs, per-class results and checkpoint removal still to come)."""
    real_save = save_json

    def killed(content, path):
        real_save(content, path)
        if any(entry.get("status") == "finished" for entry in content.get("configs", [])):
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "save_json", killed)
        with pytest.raises(Killed):
            run(out, data_dir, configs, patch)


def test_a_kill_as_a_config_ends_leaves_nothing_that_is_never_redone(
        pickled_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    killed_after_the_first_finished_entry(out, pickled_data, [A])
    assert run(out, pickled_data, [A], monkeypatch) == 0
    assert "per_class_accuracy" in entries(out)[("config_1", 0)]
    assert (out / "examples.png").is_file()


def test_a_finished_configs_checkpoint_left_by_a_kill_is_not_carried_aside(
        pickled_data, tmp_path, monkeypatch, capsys):
    """Killed after config_1's entry said finished, before its checkpoint was removed; then
    config_1 edited: its results go aside without that stale checkpoint (a ResNet's is
    90 MB, and no run would ever remove it there)."""
    out = tmp_path / "out"
    killed_after_the_first_finished_entry(out, pickled_data, [A, B])
    assert (out / "checkpoints" / "config_1_seed0.ckpt").is_file()
    capsys.readouterr()
    assert run(out, pickled_data, [dict(A, lr=0.05), B], monkeypatch) == 0
    assert "its earlier results are kept in" in capsys.readouterr().out
    (earlier,) = out.glob("earlier-*")
    assert (earlier / "config_1.pth").is_file()
    assert not (earlier / "checkpoints").exists() and not (out / "checkpoints").exists()


def test_an_unreadable_checkpoint_is_not_called_damaged(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    out = tmp_path / "out"
    with_checkpoint(out, pickled_data, [D])
    real_load = torch.load

    def permission_denied(path, *args, **kwargs):
        if str(path).endswith(".ckpt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", permission_denied)
    capsys.readouterr()
    assert run(out, pickled_data, [D], monkeypatch) == 2
    message = capsys.readouterr().err
    assert "cannot be read (Permission denied)" in message and "damaged" not in message
    assert "chmod u+r" in message


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
    assert run(out, pickled_data, [A], monkeypatch, "--seeds", "2") == 0  # "±" in the summary
    assert {entry["status"] for entry in entries(out).values()} == {"finished"}


def test_the_disk_filling_between_checkpoint_and_weights_is_one_line(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real_save = torch.save

    def full_for_weights(state, file, *args, **kwargs):
        if "format" not in state:  # the weights, not a checkpoint
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        return real_save(state, file, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(outputs.torch, "save", full_for_weights)
        assert run(out, pickled_data, [A], patch) == 1
    message = capsys.readouterr().err
    assert message.startswith("error: cannot write to") and "Traceback" not in message
    assert run(out, pickled_data, [A], monkeypatch) == 0
    assert (out / "config_1.pth").is_file()


def test_a_full_scratch_disk_behind_checkpoints_is_named(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    import tempfile

    out, scratch = tmp_path / "out", Path(tempfile.mkdtemp(dir="/dev/shm"))
    out.mkdir()
    (out / "checkpoints").symlink_to(scratch)
    assert scratch.stat().st_dev != out.stat().st_dev  # /dev/shm: another file system
    real_save = torch.save

    def full_for_checkpoints(state, file, *args, **kwargs):
        if "format" in state:  # a checkpoint, not the weights
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        return real_save(state, file, *args, **kwargs)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(checkpoints.torch, "save", full_for_checkpoints)
            assert run(out, pickled_data, [A], patch) == 1
        message = capsys.readouterr().err
        assert f"error: cannot write to {out} (or to {scratch}, another disk, which " \
               f"checkpoints/ links to)" in message
    finally:
        shutil.rmtree(scratch)


def test_a_disk_mounted_at_checkpoints_is_never_removed(pickled_data, tmp_path, monkeypatch):
    """A scratch disk mounted at OUT/checkpoints (not linked): its mount point stays, as a link
    does (removing it failed with 'Device or resource busy' and stopped every run)."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    real_is_mount = Path.is_mount
    monkeypatch.setattr(Path, "is_mount", lambda path: path == out / "checkpoints"
                        or real_is_mount(path))
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0  # a move too
    assert (out / "checkpoints").is_dir() and not any((out / "checkpoints").iterdir())


def test_an_unreadable_class_folder_is_named(folder_data, tmp_path, monkeypatch, capsys):
    real_iterdir = Path.iterdir

    def denied(self):
        if self.name == "cat" and self.parent.name == "train":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    assert run(tmp_path / "out", folder_data, [A], monkeypatch) == 2
    message = capsys.readouterr().err
    assert f"{folder_data / 'train' / 'cat'}: cannot be read (Permission denied)" in message


def test_an_over_long_out_is_refused_in_one_line(pickled_data, tmp_path, monkeypatch, capsys):
    assert run(tmp_path / ("x" * 300) / "out", pickled_data, [A], monkeypatch) == 2
    assert "File name too long" in capsys.readouterr().err


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
        assert run(out, pickled_data, [A], monkeypatch) == 0
        assert run(out, pickled_data, [A, B], monkeypatch) == 0  # with earlier results
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_name_or_a_reported_figure_edited_retrains_nothing(pickled_data, tmp_path,
                                                             monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    capsys.readouterr()
    assert run(out, pickled_data, [dict(A, name="first", reported_accuracy=60.0), B],
               monkeypatch) == 0
    assert "epoch 1/1" not in capsys.readouterr().out
    assert entries(out)[("config_1", 0)]["config"]["name"] == "first"
    assert not list(out.glob("earlier-*"))


def test_a_key_added_to_the_kit_with_a_default_keeps_finished_results(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A], monkeypatch) == 0
    monkeypatch.setitem(config.TRAINING_KEYS, "grad_clip",
                        ("float", lambda value: value >= 0, "0 or more"))
    monkeypatch.setitem(config.DEFAULTS, "grad_clip", 0.0)
    monkeypatch.setitem(config.NEUTRAL, "grad_clip", 0.0)
    capsys.readouterr()
    assert run(out, pickled_data, [A], monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    assert not list(out.glob("earlier-*"))


def test_a_change_other_than_the_epochs_is_not_blamed_on_epochs(pickled_data, tmp_path,
                                                                monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A], monkeypatch, "--epochs", "1") == 0
    capsys.readouterr()
    assert run(out, pickled_data, [dict(A, lr=0.05)], monkeypatch, "--epochs", "1") == 0
    assert "lr 0.01 -> 0.05: its earlier" in capsys.readouterr().out


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_after_the_move_lines_before_training_is_one_true_line(
        signum, status, pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    real_plot = outputs.plot_run

    def signalled(*args, **kwargs):  # the PNGs redrawn after the move: a signal comes
        signal.raise_signal(signum)
        return real_plot(*args, **kwargs)

    monkeypatch.setattr(outputs, "plot_run", signalled)
    capsys.readouterr()
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == status
    message = capsys.readouterr().err
    assert "before training started; nothing was trained" in message
    assert "checkpoint" not in message
    monkeypatch.setattr(outputs, "plot_run", real_plot)
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0


def test_weights_deleted_by_hand_are_retrained_not_called_finished(pickled_data, tmp_path,
                                                                     monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    (out / "config_2.pth").unlink()
    capsys.readouterr()
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_2: its weights config_2.pth are missing" in printed
    assert "config_2 epoch 1/1" in printed and "config_1 epoch" not in printed
    assert (out / "config_2.pth").is_file()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_or_deleted_journal_is_finished_from_its_copy(damage, pickled_data, tmp_path,
                                                               monkeypatch):
    from test_ledger import check_every_result_with_its_weights, kill_at

    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    with monkeypatch.context() as patch:
        kill_at(patch, 6)  # both records written, the files staged
        with pytest.raises(Killed):
            run(out, pickled_data, [dict(B), dict(A, lr=0.05)], patch)
    journal = out / ledger.JOURNAL
    if damage == "deleted":
        journal.unlink()
    else:
        journal.write_text(journal.read_text()[:100])
    assert run(out, pickled_data, [dict(B), dict(A, lr=0.05)], monkeypatch) == 0
    assert check_every_result_with_its_weights(out, data.load_cifar10(pickled_data)) == 3


def test_an_unreadable_journal_says_only_what_is_there(pickled_data, tmp_path, monkeypatch,
                                                      capsys):
    from test_ledger import kill_at

    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    (out / ledger.JOURNAL).write_text("{garbage")  # nothing in flight: no hidden files
    capsys.readouterr()
    assert run(out, pickled_data, [A, B], monkeypatch) == 2
    message = capsys.readouterr().err
    assert ".ledger.json) cannot be read" in message
    assert "no file of it waits under a hidden name (.ledger-*)" in message
    (out / ledger.JOURNAL).unlink()
    with monkeypatch.context() as patch:
        kill_at(patch, 4)  # config_2.pth staged under a hidden name
        with pytest.raises(Killed):
            run(out, pickled_data, [A, dict(B, lr=0.05)], patch)
    for name in (ledger.JOURNAL, ledger.JOURNAL_COPY):
        (out / name).write_text("{garbage")
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 2
    assert "the files it moves wait under hidden names (.ledger-*)" in capsys.readouterr().err
    import predict  # it advised rerunning the script, which refuses the folder

    with pytest.raises(UserError, match=r"\.ledger\.json, \.ledger\.copy\.json\) cannot be read"):
        predict.load_trained(out / "config_2.pth")


def test_a_file_deleted_by_hand_while_it_was_moved_aside_is_named(pickled_data, tmp_path,
                                                                  monkeypatch, capsys):
    """The one loss the ledger cannot prevent: a user deletes a file the kill left on its way
    under a hidden name. The move is completed and the entry left without its weights is
    named (it was said nowhere)."""
    from test_ledger import kill_at

    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    with monkeypatch.context() as patch:
        kill_at(patch, 4)  # the records written, config_2.pth staged
        with pytest.raises(Killed):
            run(out, pickled_data, [A, dict(B, lr=0.05)], patch)
    (staged,) = out.glob(".ledger-*")
    staged.unlink()
    capsys.readouterr()
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    (earlier,) = out.glob("earlier-*")
    assert (f"{earlier.name}/config_2.pth: gone while it was being moved (its hidden "
            f".ledger-* file deleted by hand?)") in capsys.readouterr().out
    assert not (earlier / "config_2.pth").exists() and (out / "config_2.pth").exists()


@pytest.mark.parametrize("error, remedy", [
    (errno.ENOSPC, "Free some space there, or choose another folder with --out DIR."),
    (errno.EPERM, "Make sure you can write there (permissions, a read-only or append-only "
                  "folder), or choose another folder with --out DIR.")])
def test_a_move_that_cannot_be_recorded_names_the_remedy_for_its_cause(
        error, remedy, pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0

    def refused(*args):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(ledger, "_record", refused)
    capsys.readouterr()
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 2
    assert f"cannot record the move of earlier results ({os.strerror(error)}); nothing " \
           f"was moved. {remedy}" in capsys.readouterr().err
    assert entries(out)[("config_2", 0)]["config"]["lr"] == 0.02  # nothing moved


def test_a_renamed_config_is_said_and_its_plots_redrawn_nothing_retrained(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [dict(A, name="a"), B], monkeypatch) == 0
    drawn, weights = (out / "loss.png").stat().st_mtime_ns, (out / "config_1.pth").read_bytes()
    capsys.readouterr()
    assert run(out, pickled_data, [dict(A, name="x"), B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: name 'a' -> 'x' (a label: its results are kept)" in printed
    assert "config_1: already finished" in printed  # nothing retrains
    assert (out / "loss.png").stat().st_mtime_ns != drawn  # its legend names config_1 (x)
    assert (out / "config_1.pth").read_bytes() == weights
    assert entries(out)[("config_1", 0)]["config"]["name"] == "x"


def test_a_changed_config_not_selected_keeps_the_config_it_was_trained_with(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch, "--configs", "1") == 0
    assert entries(out)[("config_2", 0)]["config"]["lr"] == 0.02  # what config_2.pth is
    capsys.readouterr()
    assert run(out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    assert "config_2 differs from its earlier results: lr 0.02 -> 0.05" in \
        capsys.readouterr().out
    assert entries(out)[("config_2", 0)]["config"]["lr"] == 0.05


def test_make_report_leaves_out_a_folder_stuck_in_a_move(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    import make_report
    from test_ledger import kill_at

    out = tmp_path / "modelset" / "l2"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    with monkeypatch.context() as patch:
        kill_at(patch, 4)
        with pytest.raises(Killed):
            run(out, pickled_data, [B, A], patch)
    monkeypatch.setattr(ledger, "_transfer", lambda *args: (_ for _ in ()).throw(
        OSError(30, "Read-only file system")))  # the move cannot finish now
    assert make_report.main(["--modelset", str(tmp_path / "modelset")]) == 0
    text = (tmp_path / "modelset" / "REPORT.md").read_text()
    assert ".ledger" not in text.split("Skipped")[0]  # never read as results
    assert "in the middle of a move" in text and "l2/training_result.json" in text
    assert "## Task 2: LeNet + L2" not in text


def test_weights_on_their_way_and_a_folder_locked_by_a_run_get_advice_that_works(
        pickled_data, tmp_path, monkeypatch):
    """predict.py on weights a killed move holds under a hidden name, and make_report.py on
    a folder a run is writing: each says what completes it (they said 'no such weights file'
    and 'give this run a folder of its own with --out', which make_report does not have)."""
    import make_report
    import predict
    from test_ledger import kill_at

    out = tmp_path / "modelset" / "l2"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    with monkeypatch.context() as patch:
        kill_at(patch, 4)
        with pytest.raises(Killed):
            run(out, pickled_data, [B, A], patch)
    with pytest.raises(UserError, match="A move of that folder's results was interrupted"):
        predict.load_trained(out / "config_1.pth")
    with results.locked(out):  # as a run holds it
        assert make_report.main(["--modelset", str(tmp_path / "modelset")]) == 0
    text = (tmp_path / "modelset" / "REPORT.md").read_text()
    assert "a run is writing there right now: run make_report.py again once it has " \
           "finished" in text
    assert "--out" not in text.split("## Skipped results files")[1].split("##")[0]


def test_a_move_completed_after_a_kill_is_said(pickled_data, tmp_path, monkeypatch, capsys):
    from test_ledger import kill_at

    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    with monkeypatch.context() as patch:
        kill_at(patch, 3)
        with pytest.raises(Killed):
            run(out, pickled_data, [B, A], patch)
    capsys.readouterr()
    assert run(out, pickled_data, [B, A], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert ("config_1 is config_2 now (the same config, moved in CONFIGS): its results are "
            "kept, renamed to config_2 (a move that a stopped run had begun, completed now)"
            in printed)


@pytest.mark.parametrize("spelling", ["absolute", "dot", "whole folder"])
def test_a_move_completed_in_a_folder_moved_since_names_where_it_is_now(
        spelling, pickled_data, tmp_path, monkeypatch, capsys):
    """Killed mid-move, the folder then moved (mv out moved) and the run started elsewhere:
    the completed move's lines name where things are now (they named the old path, or a
    path relative to the killed run's folder: `--out .`)."""
    from test_ledger import kill_at

    out, moved = tmp_path / "out", tmp_path / "moved"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    if spelling == "whole folder":  # weights without their results JSON: all goes aside
        (out / RESULTS).unlink()
    with monkeypatch.context() as patch:
        kill_at(patch, 4)
        if spelling == "dot":
            patch.chdir(out)
        with pytest.raises(Killed):
            run(Path(".") if spelling == "dot" else out, pickled_data,
                [A, dict(B, lr=0.05)], patch)
    out.rename(moved)
    capsys.readouterr()
    assert run(moved, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    printed = capsys.readouterr().out
    (earlier,) = moved.glob("earlier-*")
    assert (f"kept in {earlier}/ (a move that a stopped run had begun, completed "
            f"now)") in printed
    assert str(out) not in printed.replace(str(moved), "")
    if spelling == "whole folder":
        assert printed.startswith(f"{moved} holds config_1.pth")


def test_a_users_file_where_a_renamed_result_goes_is_kept(pickled_data, tmp_path, monkeypatch,
                                                          capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A], monkeypatch) == 0
    (out / "config_2.pth").write_bytes(b"my own file")  # no results entry names it
    capsys.readouterr()
    assert run(out, pickled_data, [B, A], monkeypatch) == 0  # a's results become config_2's
    assert "config_2.pth was in the way of a config's new name" in capsys.readouterr().out
    (earlier,) = out.glob("earlier-*")
    assert (earlier / "config_2.pth").read_bytes() == b"my own file"
    assert entries(out)[("config_2", 0)]["config"]["name"] == "a"


def test_weights_no_entry_names_are_kept_not_overwritten(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A], monkeypatch) == 0
    (out / "config_2.pth").write_bytes(b"my own file")  # where a new config_2 will write
    capsys.readouterr()
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    assert "config_2.pth, which no results entry names, is kept in" in capsys.readouterr().out
    (earlier,) = out.glob("earlier-*")
    assert (earlier / "config_2.pth").read_bytes() == b"my own file"


def test_an_edited_model_class_and_one_config_selected_is_no_traceback(
        pickled_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    script = importlib.import_module("L2_regularization")
    lenet = type(script.build_model({}))  # the script's model class, whatever its name

    class Wider(lenet):  # fc2 84 -> 80: the earlier weights no longer fit
        def __init__(self):
            super().__init__()
            self.fc2, self.fc3 = torch.nn.Linear(120, 80), torch.nn.Linear(80, 10)

    monkeypatch.setattr(script, "build_model", lambda config: Wider())
    capsys.readouterr()
    assert run(out, pickled_data, [A, B], monkeypatch, "--configs", "1") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "config_1 epoch 1/1" in captured.out


def test_a_garbage_checkpoint_of_a_swapped_config_travels_with_it(pickled_data, tmp_path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, pickled_data, [A, B], monkeypatch) == 0
    b = (out / "config_2.pth").read_bytes()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "config_2_seed0.ckpt").write_bytes(b"garbage")
    capsys.readouterr()
    assert run(out, pickled_data, [B, A], monkeypatch, "--configs", "2") == 0
    printed = capsys.readouterr().out
    assert "its checkpoint cannot be used" not in printed  # it was not moved aside...
    assert (out / "config_1.pth").read_bytes() == b  # ...b's result went with its config
    assert not list(out.glob("earlier-*"))
