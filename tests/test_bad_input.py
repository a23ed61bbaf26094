"""Bad input and failures. A config, a flag, the data or an output folder that is wrong is
refused before training in one line naming the culprit (exit status 2), with nothing
written; damaged, foreign or hand-edited files and a user's own files beside the kit's are
named, kept or passed over, never trusted or overwritten; a failure while training (a
diverging loss, out of memory, a full disk, a console that fails) ends in one clear line
with everything trained kept, and a rerun carries on."""
import errno
import importlib
import io
import json
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import make_report
from cifarkit import config, data, train
from conftest import (REPO, Killed, checkpoint_of, entries, finished_runs, run_command,
                      run_script, with_checkpoint, write_image_folders, write_pickled_batches)

BASE = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
# runs out of memory in its second epoch (with_checkpoint): its run keeps the checkpoint of
# epoch 1
D = {"name": "d", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 30}
SCRIPT = "L2_regularization"
# The PNGs are built, not rendered (conftest's unrendered: rendering is most of what a run
# costs here), except in the tests that ask for rendered.
pytestmark = pytest.mark.usefixtures("unrendered")


def snapshot(folder):
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns
            for path in sorted(folder.rglob("*"))}


@pytest.fixture
def existing_out(tmp_path):
    """An output folder that already holds something, to prove a refusal leaves it as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_result.json").write_text("{}")
    return out


class Payload:
    """A pickle that, if ever unpickled with plain pickle, creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- configs: refused by name, before anything is written ----

BAD_CONFIGS = [
    ("L2_regularization", [dict(BASE, momentun=0.9)],
     "config_1: unknown key 'momentun'. Did you mean 'momentum'?"),
    ("L2_regularization", [BASE, dict(BASE, lr="0.1")], "config_2: 'lr' must be a number"),
    ("L2_regularization", [dict(BASE, num_epochs=0)], "config_1: 'num_epochs' must be at least 1"),
    ("L2_regularization", [dict(BASE, num_epochs=2.5)], "config_1: 'num_epochs' must be a whole"),
    ("L2_regularization", [dict(BASE, lr=0)], "config_1: 'lr' must be greater than 0"),
    ("L2_regularization", [dict(BASE, momentum=1.0)], "config_1: 'momentum' must be in [0, 1)"),
    ("L2_regularization", [dict(BASE, batch_size=0)], "config_1: 'batch_size' must be at least 1"),
    ("L2_regularization", [dict(BASE, weight_decay=-1e-4)],
     "config_1: 'weight_decay' must be 0 or more"),
    ("Dropout_regularization", [dict(BASE, dropout=1.0)], "config_1: 'dropout' must be in [0, 1)"),
    ("L2_regularization", [dict(BASE, dropout=0.5)], "config_1: unknown key 'dropout'"),
    ("L2_regularization", [], "CONFIGS is empty"),
]


@pytest.mark.parametrize("name, configs, message", BAD_CONFIGS)
def test_bad_configs_are_refused(name, configs, message, pickled_data, existing_out,
                                 monkeypatch, capsys):
    before = snapshot(existing_out)
    assert run_script(name, existing_out, pickled_data, configs, monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert snapshot(existing_out) == before


@pytest.mark.parametrize("configs, message", [
    ([dict(BASE, name="2"), BASE], "config_1: 'name' '2' is a number"),
    ([dict(BASE, name="a,b")], "must not start or end with a space or hold a comma"),
    (dict(BASE), "CONFIGS must be a list of config dicts"),
    ([dict(BASE, lr=float("nan"))], "config_1: 'lr' must be a finite number"),
    ([dict(BASE, lr=1e300)], "config_1: 'lr' must be a finite number below 3.4e+38"),
    ([dict(BASE, lr=10**400)], "config_1: 'lr' must be a finite number"),
    ([dict(BASE, name="config_2"), BASE], "'config_2' is a number or a config's number"),
    ([dict(BASE, name="a\nb")], "must not start or end with a space or hold a comma"),
])
def test_configs_that_would_mislead_are_refused(configs, message, pickled_data, tmp_path,
                                                monkeypatch, capsys):
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, configs,
                      monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_augment_value_is_refused_with_the_choices():
    with pytest.raises(config.ConfigError) as error:
        config.check_config({"num_epochs": 1, "lr": 0.1, "batch_size": 8,
                             "augment": "reflect+crop"}, "config_1")
    for name in data.AUGMENTATIONS:
        assert repr(name) in str(error.value)
    for name in ("reflect-crop+flip", "reflect-crop+flip+inside-cutout"):
        config.check_config({"num_epochs": 1, "lr": 0.1, "batch_size": 8, "augment": name},
                            "config_1")


@pytest.mark.parametrize("extra, message", [
    ({"peak_at": 0.3}, "'peak_at' places the peak of the one-cycle schedule, but this "
                       "config's schedule is 'constant'"),
    ({"peak_at": 0.3, "schedule": "constant"}, "add \"schedule\": \"onecycle\" or remove"),
    ({"peak_at": 0.0, "schedule": "onecycle"}, "'peak_at' must be above 0 and below 1"),
    ({"peak_at": 1.0, "schedule": "onecycle"}, "'peak_at' must be above 0 and below 1"),
    ({"peak_at": "20%", "schedule": "onecycle"}, "'peak_at' must be a number"),
])
def test_peak_at_is_refused_where_it_means_nothing(extra, message):
    with pytest.raises(config.ConfigError, match="config_2") as error:
        config.check_config(dict({"num_epochs": 1, "lr": 0.1, "batch_size": 8}, **extra),
                            "config_2")
    assert message in str(error.value)


def test_a_model_setting_is_declared_by_its_script(pickled_data, tmp_path, monkeypatch,
                                                   capsys):
    script = importlib.import_module("Dropout_regularization")
    monkeypatch.setattr(script, "MODEL_SETTINGS", dict(
        script.MODEL_SETTINGS, width={"kind": "int", "min": 1, "default": 120}))
    assert run_script("Dropout_regularization", tmp_path / "out", pickled_data,
                      [dict(A, width=0)], monkeypatch) == 2
    assert "config_1: 'width' must be at least 1, got 0." in capsys.readouterr().err
    monkeypatch.setattr(script, "MODEL_SETTINGS", {"dropout": {"kind": "float", "maxx": 1}})
    assert run_script("Dropout_regularization", tmp_path / "out", pickled_data, [A],
                      monkeypatch) == 2
    assert "MODEL_SETTINGS['dropout']: must be a dict with 'kind'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class Returns(torch.nn.Module):
    """A LeNet-sized model whose forward gives ``returned(scores, features)``."""

    def __init__(self, returned, last=None, view=False):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 4, stride=4), last or torch.nn.Linear(256, 10)
        self.returned, self.view = returned, view

    def forward(self, x):
        x = self.conv(x)
        x = x.view(-1, 256) if self.view else x.flatten(1)
        return self.returned(self.fc(x), x)


@pytest.mark.parametrize("model, message", [
    (Returns(lambda scores, x: (scores, x)), "it gives a tuple. Check the last layer"),
    (Returns(lambda scores, x: scores.long()), "it gives a tensor of shape (2, 10) (torch.int64)"),
    (Returns(lambda scores, x: scores, last=torch.nn.LazyLinear(10)),
     "has lazy layers (fc.weight)"),
    (Returns(lambda scores, x: scores).requires_grad_(False), "has no parameters to train"),
    (Returns(lambda scores, x: scores, view=True), "fails on a batch of two 3x32x32 images "
                                                   "(RuntimeError: view size is not compatible"),
], ids=["a tuple", "whole numbers", "a lazy layer", "nothing to train", "view"])
def test_a_model_that_cannot_train_is_refused_before_anything_is_written(
        model, message, pickled_data, tmp_path, monkeypatch, capsys):
    script = importlib.import_module("L2_regularization")
    monkeypatch.setattr(script, "build_model", lambda config: model)
    assert run_script(script, tmp_path / "out", pickled_data, [A], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config_1: the model ") and message in err and \
        err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


# ---- flags ----

BAD_FLAGS = [
    (["--configs", "4"], "--configs 4: '4' is not a config of this script"),
    (["--configs", "1,recipes"], "'recipes' is not a config of this script (it has config_1 "
                                 "to config_3, or a name: recipe, speedrun)"),
    (["--subset", "100000"], "--subset 100000: must be between 10 and the 300"),
    (["--subset", "20", "--configs", "2"], "--subset 20 is smaller than one batch of config_2"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_flags_are_refused(flags, message, pickled_data, existing_out, monkeypatch,
                               capsys):
    before = snapshot(existing_out)
    configs = [BASE, dict(BASE, batch_size=32, name="recipe"), dict(BASE, name="speedrun")]
    assert run_script("Original_version_model_multiGPU", existing_out, pickled_data, configs,
                      monkeypatch, *flags) == 2
    assert message in capsys.readouterr().err
    assert snapshot(existing_out) == before


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "Original_version_model.py: error: argument --epochs: 0 must be at least 1"),
    (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
])
def test_bad_flag_values_stop_argparse(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module("Original_version_model").main(flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


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


def test_device_cuda_without_cuda_is_refused(pickled_data, existing_out, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine too
    before = snapshot(existing_out)
    assert run_script("Original_version_model", existing_out, pickled_data, None, None,
                      device="cuda") == 2
    assert "--device cuda: no CUDA GPU is visible" in capsys.readouterr().err
    assert snapshot(existing_out) == before


# ---- the data: missing, damaged, not CIFAR-10's shape, unreadable ----

@pytest.mark.parametrize("case", ["missing", "empty", "no-network"])
def test_no_data_is_one_clear_message(case, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"missing": ["--data-dir", str(tmp_path / "nowhere")],
            "empty": ["--data-dir", str(empty)], "no-network": []}[case]
    result = run_command("Resnet_model.py", *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "--data-dir" in result.stderr and "cifar-10-python.tar.gz" in result.stderr
    assert not (tmp_path / "out").exists()


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


def corrupt(kind, tmp_path):
    """A broken copy of the generated data; returns (data dir, the culprit the message names)."""
    if kind in ("missing batch", "truncated batch", "labels out of range", "archive",
                "code in a batch"):
        root = write_pickled_batches(tmp_path / "data")
        batches = root / "cifar-10-batches-py"
        if kind == "missing batch":
            (batches / "data_batch_3").unlink()
            return root, "data_batch_3"
        if kind == "truncated batch":
            raw = (batches / "data_batch_2").read_bytes()
            (batches / "data_batch_2").write_bytes(raw[: len(raw) // 2])
            return root, "data_batch_2"
        if kind == "code in a batch":
            (batches / "data_batch_4").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
            return root, "data_batch_4: not a readable CIFAR-10 batch file"
        if kind == "labels out of range":
            batch = pickle.loads((batches / "test_batch").read_bytes())
            batch["labels"][0] = 10
            (batches / "test_batch").write_bytes(pickle.dumps(batch))
            return root, "test_batch: labels outside 0-9"
        archive_dir = tmp_path / "archive"
        archive_dir.mkdir()
        (archive_dir / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 100)
        return archive_dir, "cifar-10-python.tar.gz: not a readable .tar.gz archive"
    root = write_image_folders(tmp_path / "data")
    cat = root / "train" / "cat"
    first = sorted(cat.iterdir())[0]
    if kind == "class folder missing":
        shutil.rmtree(root / "test" / "ship")
        return root, "ship: class folder missing"
    if kind == "class folder empty":
        for path in cat.iterdir():
            path.unlink()
        return root, "cat: class folder holds no .png or .jpg images"
    if kind == "extra folder":
        (root / "train" / "unicorn").mkdir()
        return root, "folders that are not CIFAR-10 classes: unicorn"
    if kind == "undecodable image":
        first.write_bytes(b"this is not a png")
        return root, f"{first.name}: cannot decode this image"
    if kind == "wrong size":
        Image.new("RGB", (64, 64)).save(first)
        return root, f"{first.name}: a 64x64 RGB image"
    Image.new("L", (32, 32)).save(first)  # grayscale
    return root, f"{first.name}: a 32x32 L image"


@pytest.mark.parametrize("kind", [
    "missing batch", "truncated batch", "code in a batch", "labels out of range", "archive",
    "class folder missing", "class folder empty", "extra folder", "undecodable image",
    "wrong size", "grayscale"])
def test_bad_data_is_refused_naming_the_file(kind, tmp_path, existing_out, capsys):
    data_dir, culprit = corrupt(kind, tmp_path)
    before = snapshot(existing_out)
    assert run_script("Original_version_model", existing_out, data_dir, None, None, "--epochs",
                      "1") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and culprit in error
    assert snapshot(existing_out) == before
    assert not (tmp_path / "pwned").exists()


def test_an_oversized_image_is_refused_before_it_is_decoded(tmp_path, capsys):
    from PIL import Image

    root = write_image_folders(tmp_path / "data")
    Image.new("RGB", (12000, 12000)).save(sorted((root / "train" / "cat").iterdir())[0])
    assert run_script("L2_regularization", tmp_path / "out", root, None, None, "--epochs", "1") == 2
    assert "a 12000x12000 RGB image; CIFAR-10 images are 32x32 RGB" in capsys.readouterr().err


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


# ---- the output folder: someone else's, unwritable, full, something in the way ----

def tree(folder):
    """Every file below ``folder`` with its content, to prove nothing moved or changed."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


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


def test_another_scripts_folder_or_a_run_store_as_out_is_refused(pickled_data, tmp_path,
                                                                  capsys):
    """The Dropout script into the L2 script's folder would replace its results JSON and
    weights views (the baseline's, of other names, may share it: test_run.py); an --out inside
    a run store would put views among runs written once."""
    out = tmp_path / "l2"
    tiny = [{"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}]
    with pytest.MonkeyPatch.context() as patch:
        assert run_script("L2_regularization", out, pickled_data, tiny, patch) == 0
        (run,) = (out / "runs").iterdir()
        before = tree(tmp_path)
        capsys.readouterr()
        for script, where, said in [
                ("Dropout_regularization", out, "holds the results of L2_regularization.py in "
                                                "training_result.json, which this script would "
                                                "replace"),
                ("L2_regularization", out / "runs", "inside the run store"),
                ("L2_regularization", run, "inside the run store")]:
            assert run_script(script, where, pickled_data, tiny, patch) == 2
            error = capsys.readouterr().err
            assert error.startswith(f"error: --out {where}: ") and said in error
        assert tree(tmp_path) == before
        mine = tmp_path / "runs" / "1"  # a folder of the user's named runs, another tool's
        mine.mkdir(parents=True)
        (mine / "run.json").write_text("{}")
        for where in (tmp_path / "runs" / "lenet", tmp_path / "new" / "runs" / "lenet"):
            assert run_script("L2_regularization", where, pickled_data, tiny, patch) == 0


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_out_folder_on_a_virtual_file_system_is_refused_as_such(pickled_data, capsys):
    """/proc looks writable to root, and has "0 MiB free": say what it is instead."""
    assert run_script("L2_regularization", "/proc/cifar-kit-results", pickled_data, None, None,
                      "--epochs", "1") == 2
    error = capsys.readouterr().err
    assert "not on a disk (a virtual file system such as /proc or /sys)" in error
    assert "MiB free" not in error


def test_an_output_folder_that_cannot_be_written_is_refused(pickled_data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run_script("Original_version_model", blocker / "out", pickled_data, None, None) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_an_over_long_out_is_refused_in_one_line(pickled_data, tmp_path, monkeypatch, capsys):
    assert run_script(SCRIPT, tmp_path / ("x" * 300) / "out", pickled_data, [A], monkeypatch) == 2
    message = capsys.readouterr().err
    assert "File name too long" in message and message.count("\n") == 1


def test_a_nearly_full_disk_is_refused_before_training(pickled_data, existing_out,
                                                      monkeypatch, capsys):
    from cifarkit import outputs

    monkeypatch.setattr(outputs.shutil, "disk_usage",
                        lambda path: SimpleNamespace(total=2**40, free=5 * 2**20))
    before = snapshot(existing_out)
    assert run_script("Original_version_model", existing_out, pickled_data, None, None) == 2
    assert "only 5 MiB free on that disk" in capsys.readouterr().err
    assert snapshot(existing_out) == before


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


def test_an_old_kits_empty_checkpoints_folder_is_left_alone(pickled_data, tmp_path,
                                                            monkeypatch):
    """An empty OUT/checkpoints (where the kit before the store kept them; perhaps a scratch
    disk's mount point) is left as it is, and the run goes on."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    assert (out / "checkpoints").is_dir() and not any((out / "checkpoints").iterdir())


# ---- a user's own files beside the kit's, and the kit's files edited by hand ----

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


def test_a_users_file_where_a_weights_view_goes_is_kept(pickled_data, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    (out / "config_2.pth").write_bytes(b"my own file")  # no run's weights
    capsys.readouterr()
    # a's results become config_2's
    assert run_script(SCRIPT, out, pickled_data, [B, A], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1 is config_2 now (the same config, moved in CONFIGS)" in printed
    assert (f"{out / 'config_2.pth'} is not the weights of any run in {out / 'runs'}/ (a file "
            f"of your own?): left as it is") in printed
    assert (out / "config_2.pth").read_bytes() == b"my own file"
    a = entries(out)[("config_2", 0)]
    assert a["config"]["name"] == "a" and (out / a["weights"]).is_file()
    assert a["weights"] == f"{a['run']}/weights.pth"


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
        # and again, with earlier results
        assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if odd == "named pipe":
        assert (out / "stream.json").is_fifo()
    else:
        assert (out / "mine.json").read_text() == "[" * 100000 + "]" * 100000


@pytest.mark.usefixtures("rendered")
def test_a_file_a_pipe_and_a_broken_link_in_runs_are_passed_over(pickled_data, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    (out / "runs" / "notes.txt").write_text("mine")
    os.mkfifo(out / "runs" / "a-pipe")  # opened, it would wait for a writer for ever
    (out / "runs" / "gone").symlink_to(tmp_path / "nowhere")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".notes.0123abcd.tmp").write_text("mine too")  # named like a temporary
    (out / "runs" / "linked").symlink_to(elsewhere)
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    assert make_report.main(["--modelset", str(tmp_path)]) == 0
    assert (out / "runs" / "notes.txt").read_text() == "mine"
    assert (elsewhere / ".notes.0123abcd.tmp").read_text() == "mine too"
    assert len(finished_runs(out)) == 2


HAND_EDITS = ["entry without status", "entry without run", "configs not a list", "a list",
              ("final_test_accuracy", None), ("train_seconds", "abc"), ("status", "diverged"),
              ("status", "whatever"), ("run", "/elsewhere/runs/x"), ("run", "runs/../../x")]


def test_a_hand_edited_results_json_is_kept_aside_and_the_run_goes_on(
        pickled_data, tmp_path, monkeypatch, capsys):
    """The results JSON is a view of the runs: whatever was done to it by hand (a field
    removed, a value of the wrong kind, diverged without diverged_at), the next run keeps the
    edited file aside, retrains nothing and writes the view anew."""
    out = tmp_path / "out"
    configs = [BASE, dict(BASE, lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    path = out / "training_result.json"
    shown = json.loads(path.read_text())["configs"]
    for edit in HAND_EDITS:
        results = json.loads(path.read_text())
        if isinstance(edit, str) and edit.startswith("entry without"):
            del results["configs"][0][edit.split()[-1]]
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


def test_a_run_record_edited_by_hand_is_passed_over_and_its_config_trains_anew(
        pickled_data, tmp_path, monkeypatch, capsys):
    """A finished run's run.json made unusable by hand (the gap's accuracy gone, null or not a
    number, no final accuracy) is not shown: its config trains anew once, the record stays as
    it was, no view is kept aside as unreadable, and make_report reports the new run."""
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    edited = {}
    for key, value in [("train_accuracy_eval", None), ("train_accuracy_eval", "abc"),
                       ("train_accuracy_eval", "absent"), ("final_test_accuracy", None)]:
        (path,) = [path for path in out.glob("runs/*/run.json") if path not in edited]
        record = json.loads(path.read_text())
        target = record["history"][-1] if key == "train_accuracy_eval" else record
        if value == "absent":
            del target[key]
        else:
            target[key] = value
        path.write_text(json.dumps(record))
        edited[path] = path.read_bytes()
        capsys.readouterr()
        for _ in range(2):
            assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
        printed = capsys.readouterr().out
        assert printed.count("config_1 epoch 1/1") == 1 and "could not be read" not in printed
    assert {path: path.read_bytes() for path in edited} == edited
    assert not list(out.glob("*.unreadable-*"))
    assert make_report.main(["--modelset", str(tmp_path)]) == 0
    assert "skipped" not in capsys.readouterr().err


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


# ---- damaged, foreign and unreadable checkpoints: named, never unpickled ----

@pytest.mark.usefixtures("rendered")
def test_a_foreign_checkpoint_is_refused_never_run(pickled_data, tmp_path, monkeypatch,
                                                  capsys):
    """A file put by hand where an unfinished run keeps its checkpoint is read only as data:
    refused by name, never unpickled."""
    out = tmp_path / "out"
    configs = [BASE]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    (record_path,) = out.glob("runs/*/run.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, status="running")))  # as if unfinished
    (record_path.parent / "weights.pth").unlink()
    marker = tmp_path / "pwned"
    checkpoint = record_path.parent / "checkpoint.ckpt"
    checkpoint.write_bytes(pickle.dumps(Payload(marker)))
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 2
    assert "checkpoint.ckpt: not a checkpoint written by this kit" in capsys.readouterr().err
    assert not marker.exists()

    torch.save({"some": "dict"}, checkpoint)
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 2
    assert "not a checkpoint written by this kit" in capsys.readouterr().err


def test_a_corrupt_checkpoint_never_suggests_unpickling_it(pickled_data, tmp_path,
                                                          monkeypatch, capsys):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # a second Ctrl-C as training starts: a run, unfinished
        patch.setattr(train, "train_config", lambda *args, **kwargs: (_ for _ in ()).throw(
            KeyboardInterrupt))
        assert run_script("L2_regularization", out, pickled_data, [BASE], patch) == 130
    checkpoint = checkpoint_of(out)
    checkpoint.write_bytes(b"PK\x03\x04 not a zip")
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [BASE], monkeypatch) == 2
    error = capsys.readouterr().err
    assert f"{checkpoint}: not a checkpoint written by this kit" in error
    assert "weights_only" not in error


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


# ---- failures while training: a diverging loss, out of memory, a full disk, the console ----

@pytest.mark.usefixtures("rendered")
def test_a_diverging_config_is_marked_and_the_next_one_runs(pickled_data, tmp_path,
                                                           monkeypatch, capsys):
    out = tmp_path / "out"
    configs = [{"num_epochs": 2, "lr": 1e6, "momentum": 0.9, "batch_size": 32},
               {"num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32}]
    status = run_script("Original_version_model_multiGPU", out, pickled_data, configs, monkeypatch)
    captured = capsys.readouterr()
    assert status == 1
    results = json.loads((out / "training_result.json").read_text())
    diverged, healthy = results["configs"]
    assert diverged["status"] == "diverged"
    assert diverged["diverged_at"]["epoch"] == 1 and diverged["diverged_at"]["step"] >= 1
    assert diverged["weights"] is None and not (out / "config_1.pth").exists()
    assert healthy["status"] == "finished" and (out / "config_2.pth").exists()
    assert "DIVERGED at epoch 1" in captured.out
    assert "config_1: the loss became NaN or infinite" in captured.err


@pytest.mark.usefixtures("rendered")
def test_out_of_memory_names_the_config_and_keeps_the_others(pickled_data, tmp_path,
                                                             monkeypatch, capsys):
    real_loss = torch.nn.functional.cross_entropy

    def out_of_memory_on_big_batches(outputs, targets, **kwargs):
        if len(targets) > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(outputs, targets, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", out_of_memory_on_big_batches)
    out = tmp_path / "out"
    configs = [dict(BASE, batch_size=512), dict(BASE, batch_size=32)]
    status = run_script("Original_version_model_multiGPU", out, pickled_data, configs, monkeypatch,
                        "--configs", "2,1")
    captured = capsys.readouterr()
    assert status == 1
    assert "config_1 ran out of GPU memory at batch_size 512" in captured.err
    results = {entry["id"]: entry for entry in
               json.loads((out / "training_result.json").read_text())["configs"]}
    assert results["config_2"]["status"] == "finished"
    assert results["config_1"]["status"] == "out_of_memory"


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


@pytest.mark.usefixtures("rendered")
def test_a_failed_write_exits_1_keeps_what_was_saved_and_a_rerun_carries_on(
        pickled_data, tmp_path, monkeypatch, capsys):
    from cifarkit import outputs

    real_save_weights, saved = outputs.save_weights, []

    def disk_full_after_config_1(model, path):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        real_save_weights(model, path)

    monkeypatch.setattr(outputs, "save_weights", disk_full_after_config_1)
    out = tmp_path / "out"
    configs = [BASE, dict(BASE, lr=0.02)]
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 1
    error = capsys.readouterr().err
    assert f"error: cannot write to {out}" in error and "No space left on device" in error
    assert "Traceback" not in error
    kept = json.loads((out / "training_result.json").read_text())["configs"]
    assert [(entry["id"], entry["status"]) for entry in kept] == [
        ("config_1", "finished"), ("config_2", "running")]  # never "finished" without weights
    assert (out / "config_1.pth").exists() and not (out / "config_2.pth").exists()

    monkeypatch.setattr(outputs, "save_weights", real_save_weights)  # room again
    assert run_script("L2_regularization", out, pickled_data, configs, monkeypatch) == 0
    assert "config_1: already finished" in capsys.readouterr().out
    results = json.loads((out / "training_result.json").read_text())["configs"]
    assert [(entry["id"], entry["status"]) for entry in results] == [
        ("config_1", "finished"), ("config_2", "finished")]
    assert (out / "config_2.pth").exists()


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
    # "±" in the summary
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch, "--seeds", "2") == 0
    assert {entry["status"] for entry in entries(out).values()} == {"finished"}


def test_a_stray_notebook_in_a_results_folder_is_named_to_move_out(pickled_data, tmp_path,
                                                                    monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [BASE], monkeypatch) == 0
    (out / "analysis.ipynb").write_text("{}")
    capsys.readouterr()
    assert run_script("L2_regularization", out, pickled_data, [BASE], monkeypatch) == 2
    error = capsys.readouterr().err
    assert "analysis.ipynb" in error and f"Move it out of {out} and rerun" in error
    assert "--out DIR" not in error  # not another folder: that would train everything anew


def test_the_report_never_goes_into_the_data_and_out_never_at_a_modelset(
        pickled_data, tmp_path, monkeypatch, capsys):
    """make_report --modelset at the CIFAR-10 folder is refused (nothing written there), and
    a script's --out at the folder that holds the scripts' folders is refused before it
    trains, with a command that works; SIGTERM to make_report says one line."""
    assert make_report.main(["--modelset", str(pickled_data)]) == 2
    assert "CIFAR-10 data folder" in capsys.readouterr().err
    assert not (pickled_data / "REPORT.md").exists() and not (pickled_data / "figures").exists()
    modelset = tmp_path / "modelset"
    assert run_script("L2_regularization", modelset / "l2", pickled_data, [BASE],
                      monkeypatch) == 0
    capsys.readouterr()
    assert run_script("L2_regularization", modelset, pickled_data, [BASE], monkeypatch) == 2
    error = capsys.readouterr().err
    assert "holds the scripts' output folders (l2/)" in error
    assert f"--out {modelset}/NAME" in error and not (modelset / "runs").exists()

    def terminated(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(make_report, "read_scripts", terminated)
    assert make_report.main(["--modelset", str(modelset)]) == 143
    assert "Stopped by SIGTERM; REPORT.md and figures/ are whole" in capsys.readouterr().err


def test_a_download_another_process_holds_is_waited_for_by_name_then_given_up(
        tmp_path, monkeypatch, capsys):
    """A run with no --data-dir whose ./data another process is downloading into: it says
    whom it waits for, and gives up in one line after data.DOWNLOAD_WAIT seconds."""
    from cifarkit import store

    root = tmp_path / "data"
    root.mkdir()
    held = store.lock(root, blocking=True)  # as the other process's download holds it
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(data, "DOWNLOAD_WAIT", 0.5)
    try:
        with pytest.raises(data.DataError, match="gave up waiting"):
            data.load_cifar10(None, download_root=root)
    finally:
        os.close(held)
    assert f"Waiting for another process (pid {os.getpid()})" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["/nonexistent/g++", "/bin/false", "headers"])
def test_compile_without_a_compiler_or_pythons_headers_is_one_line_before_training(
        pickled_data, tmp_path, monkeypatch, capsys, missing):
    """torch.compile builds C++ with the compiler CXX names (else g++): without one that runs
    (or without Python.h) its first step ended in a 118-line InductorError. Now: one line
    naming what is missing, exit 2, nothing written."""
    if missing != "headers":
        monkeypatch.setenv("CXX", missing)
    else:
        import sysconfig

        paths = sysconfig.get_paths()
        monkeypatch.setattr(sysconfig, "get_paths", lambda *args, **kwargs: dict(
            paths, include=str(tmp_path / "no-headers")))
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [BASE], monkeypatch,
                      "--compile") == 2
    error = capsys.readouterr().err
    assert "--compile needs " + ("Python's headers" if missing == "headers" else
                                 f"a C++ compiler (`{missing} --version` fails here)") in error
    assert "Traceback" not in error and not out.exists()
