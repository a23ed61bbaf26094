"""The results ledger: a kill at any step of any move (moving a changed config aside,
--restart, a reorder), then a rerun of the same script or of another one into the same
folder, leaves every finished result beside its own weights, which reload to the accuracy
its JSON records; nothing is stuck and nothing is lost."""
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from cifarkit import data, ledger, outputs, train
from test_scripts import reload_and_score

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
# runs out of memory in its second epoch: its checkpoint (of epoch 1) stays in the folder
D = {"name": "d", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 30}
SCRIPT = "L2_regularization"


class Killed(BaseException):
    """The process dies here: nothing in the kit catches it (as nothing can catch kill -9)."""


def run(out, data_dir, configs, monkeypatch, *flags, name=SCRIPT):
    script = importlib.import_module(name)
    monkeypatch.setattr(script, "CONFIGS", configs)
    return script.main(["--data-dir", str(data_dir), "--out", str(out), "--device", "cpu",
                        *flags])


def with_checkpoint(out, data_dir, configs):
    """Train ``configs``; the one of batch_size 30 (D) runs out of memory in its second
    epoch and leaves its checkpoint (of epoch 1)."""
    real_step, steps = train._train_step, []

    def out_of_memory_in_epoch_2(step, data, index, *args):
        steps.append(len(index))
        if len(index) == 30 and steps.count(30) > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(step, data, index, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_train_step", out_of_memory_in_epoch_2)
        assert run(out, data_dir, configs, patch) == 1


@pytest.fixture(scope="module")
def trained(pickled_data, tmp_path_factory):
    """A folder with two finished configs and one whose checkpoint was left by an OOM."""
    out = tmp_path_factory.mktemp("ledger") / "out"
    with_checkpoint(out, pickled_data, [A, B, D])
    assert (out / "checkpoints" / "config_3_seed0.ckpt").is_file()
    return out


def copy_of(trained, tmp_path, cross_fs):
    """The trained folder anew; with ``cross_fs`` its checkpoints/ is a link to a folder on
    another file system (/dev/shm), as a scratch disk would be."""
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    if cross_fs:
        scratch = Path(tempfile.mkdtemp(dir="/dev/shm"))
        for path in (out / "checkpoints").iterdir():
            shutil.move(path, scratch / path.name)
        (out / "checkpoints").rmdir()
        (out / "checkpoints").symlink_to(scratch)
    return out


def kill_at(monkeypatch, step):
    """Kill the process before the ``step``-th file operation (rename, removal) of the
    ledger's transaction; returns the list of operations seen."""
    seen, active = [], []
    for module, name in ((os, "replace"), (os, "unlink"), (os, "rmdir"),
                         (shutil, "copyfileobj")):
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            if active:
                seen.append(_name)
                if len(seen) == step:
                    raise Killed
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    real_commit = ledger._commit

    def commit(*args):
        active.append(1)
        try:
            real_commit(*args)
        finally:
            active.clear()

    monkeypatch.setattr(ledger, "_commit", commit)
    return seen


def check_every_result_with_its_weights(out, dataset):
    """Every finished entry of every results JSON below ``out`` has its weights beside it,
    and they reload to its recorded accuracy; no transaction or staged file is left."""
    assert not list(out.rglob(".ledger*")) and not list(out.rglob("checkpoints/.ledger*"))
    checked = 0
    for path in out.rglob("*.json"):
        results = json.loads(path.read_text())
        script = importlib.import_module(Path(results["script"]).stem)
        for entry in results["configs"]:
            if entry["status"] == "finished":
                weights = path.parent / entry["weights"]
                assert weights.is_file(), (path, entry["id"])
                assert reload_and_score(script, entry, weights, dataset) == pytest.approx(
                    entry["final_test_accuracy"]), (path, entry["id"])
                checked += 1
    return checked


MOVES = {  # name: (the second run's CONFIGS, its flags)
    "move aside": ([A, dict(B, lr=0.05), D], []),
    "restart some": ([A, B, D], ["--restart", "--configs", "2,3"]),
    "restart all": ([A, B, D], ["--restart"]),
    "reorder": ([D, B, A], []),
    "reorder and change": ([B, dict(A, lr=0.05)], []),
}


@pytest.mark.parametrize("cross_fs", [False, True], ids=["same disk", "scratch disk"])
@pytest.mark.parametrize("move", MOVES)
def test_a_kill_at_every_step_of_a_move_loses_nothing(move, cross_fs, trained, pickled_data,
                                                      tmp_path, monkeypatch):
    configs, flags = MOVES[move]
    dataset = data.load_cifar10(pickled_data)
    for drawing in ("plot_run", "plot_examples"):  # not what this test is about: 2/3 of its time
        monkeypatch.setattr(outputs, drawing, lambda *args, **kwargs: None)
    step, finished_runs = 1, 0
    while True:
        out = copy_of(trained, tmp_path / str(step), cross_fs)
        with monkeypatch.context() as patch:
            seen = kill_at(patch, step)
            try:
                status = run(out, pickled_data, configs, patch, *flags)
            except Killed:
                status = "killed"
        # the next run: the same script half of the time, else another one
        if step % 2:
            assert run(out, pickled_data, configs, monkeypatch) == 0
        else:
            assert run(out, pickled_data, [A], monkeypatch, "--epochs", "1",
                       name="Dropout_regularization") == 0
        finished_runs += check_every_result_with_its_weights(out, dataset)
        if cross_fs:  # the scratch folder in /dev/shm is not under tmp_path: not left there
            shutil.rmtree((out / "checkpoints").resolve(), ignore_errors=True)
        if status != "killed":
            break
        step += 1
    assert len(seen) >= 4 and step == len(seen) + 1  # every step was a kill point once
    assert finished_runs > 0


def test_make_report_completes_a_move_that_a_kill_interrupted(trained, pickled_data, tmp_path,
                                                              monkeypatch, capsys):
    import make_report

    out = copy_of(trained, tmp_path, cross_fs=False)
    with monkeypatch.context() as patch:
        for drawing in ("plot_run", "plot_examples"):
            patch.setattr(outputs, drawing, lambda *args, **kwargs: None)
        kill_at(patch, 4)  # the files are staged under hidden names; nothing is in place
        with pytest.raises(Killed):
            run(out, pickled_data, [D, B, A], patch)
    assert (out / ledger.JOURNAL).is_file() and not (out / "config_1.pth").exists()
    capsys.readouterr()
    assert make_report.main(["--modelset", str(tmp_path)]) == 0
    assert f"{out}: config_" in capsys.readouterr().out  # what moved, said by whoever moves it
    assert check_every_result_with_its_weights(out, data.load_cifar10(pickled_data)) == 2
    assert "config_3" in (tmp_path / "REPORT.md").read_text()
