"""What README.md states about file names and messages is what the kit writes and prints.

The names and messages are read from README.md itself, so an edit on either side that the
other does not follow fails here.
"""
import contextlib
import importlib
import inspect
import io
import itertools
import pickle
import re
import signal
from types import SimpleNamespace

import pytest
import torch

from cifarkit import experiment, outputs, train
from conftest import REPO, write_pickled_batches

README = (REPO / "README.md").read_text()
BASE = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}


def table(heading):
    """The rows (lists of cells) of the README table whose header row starts with
    ``heading``."""
    lines = README.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"| {heading}"))
    rows = []
    for line in lines[start + 2:]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


# ---- file names ----

@pytest.mark.parametrize("row", table("Report task"), ids=lambda row: row[1].strip("`"))
def test_each_script_writes_the_folder_and_results_json_readme_names(row, monkeypatch):
    script_file, folder, results_file = (cell.strip("`") for cell in row[1:4])
    script = importlib.import_module(script_file.removesuffix(".py"))
    default_weights = inspect.signature(experiment.run).parameters["weights_file"].default
    called = {}
    monkeypatch.setattr(experiment, "run", lambda **kwargs: called.update(kwargs) or 0)
    assert script.main([]) == 0
    assert called["script"] == script_file
    assert f"{called['out_dir']}/" == folder
    assert called["results_file"] == results_file
    # README: config_N.pth per config, model.pth for the baseline
    weights = called.get("weights_file", default_weights)
    assert weights == ("model.pth" if script_file == "Original_version_model.py"
                       else "config_{number}.pth")


def readme_names(pattern):
    """Every file name of the form ``pattern`` (a regex) that README.md states."""
    names = set(re.findall(pattern, README))
    assert names, f"README.md states no name like {pattern}"
    return names


def interrupt_the_second_training(monkeypatch):
    """Stop the second config (or seed) trained, at its first step, by SIGTERM."""
    real_train_config, calls = train.train_config, []

    def stopped_by_sigterm(*args, stop_requested, **kwargs):
        calls.append(1)

        def ask():
            if len(calls) == 2:
                calls.append(1)  # once
                signal.raise_signal(signal.SIGTERM)  # the kit's handler runs here
            return stop_requested()

        return real_train_config(*args, stop_requested=ask, **kwargs)

    monkeypatch.setattr(train, "train_config", stopped_by_sigterm)
    return real_train_config


def test_checkpoints_and_extra_seed_weights_have_the_names_readme_gives(pickled_data, tmp_path,
                                                                       monkeypatch, capsys):
    """README: checkpoints/config_N_seedS.ckpt while a config is unfinished, and
    config_N_seedS.pth for the weights of the extra seeds of --seeds."""
    script = importlib.import_module("L2_regularization")
    out = tmp_path / "out"
    argv = ["--data-dir", str(pickled_data), "--configs", "2", "--seed", "3", "--seeds", "2",
            "--epochs", "1", "--out", str(out), "--device", "cpu"]
    real_train_config = interrupt_the_second_training(monkeypatch)
    assert script.main(argv) == 143  # seed 3 finished, seed 4 stopped
    for template in readme_names(r"checkpoints/config_N[\w]*\.ckpt"):
        written = template.replace("config_N", "config_2").replace("seedS", "seed4")
        assert sorted(str(path.relative_to(out)) for path in out.glob("checkpoints/*")) == [
            written]

    monkeypatch.setattr(train, "train_config", real_train_config)
    assert script.main(argv) == 0  # the same command finishes seed 4
    assert "config_2 (seed 4): resuming from its checkpoint" in capsys.readouterr().out
    for template in readme_names(r"`(config_N_seed\w*\.pth)`"):
        assert (out / template.replace("config_N", "config_2").replace("seedS", "seed4")).is_file()
    assert (out / "config_2.pth").is_file()  # the first seed's, under the plain name


# ---- messages ----

MESSAGE_ROWS = table("message starts with")
# README text -> the regex it stands for: placeholders, and the ellipsis for "the rest"
PLACEHOLDERS = {"config_N": r"config_\d+", "<checkpoint>": r"/\S+\.ckpt",
                "<file>": r"/[^\s:]+", "…": r".*", "DIR": r"\S+"}
PLACEHOLDER = re.compile(r"config_N|<checkpoint>|<file>|…|\bDIR\b|'[^']*'|\b[NBES]\b")
# Fragments README lists that the kit no longer prints: strict, so that fixing README
# (or the kit) turns these into failures until the entry goes.
STALE = {"not a readable checkpoint": "checkpoints.py prints 'not a checkpoint written by "
                                      "this kit' for damaged files too since 3d6910d"}


def message_pattern(fragment):
    """The regex a README message stands for: 'x' is any quoted word, N, B, E and S are
    numbers, DIR and <file> are paths, … is the rest of the message."""
    parts, end = [], 0
    for match in PLACEHOLDER.finditer(fragment):
        token = match.group()
        parts += [re.escape(fragment[end:match.start()]),
                  PLACEHOLDERS.get(token, r"'[^']+'" if token.startswith("'") else r"\d+")]
        end = match.end()
    return re.compile("".join(parts) + re.escape(fragment[end:]))


def message_fragments():
    """(fragment, whether it opens the message) for each message README lists: the first of
    a row's alternatives starts a message, the others may be its continuation."""
    for row in MESSAGE_ROWS:
        for index, fragment in enumerate(re.findall(r"`([^`]+)`", row[0])):
            marks = [pytest.mark.xfail(strict=True, reason=STALE[fragment])] \
                if fragment in STALE else []
            yield pytest.param(fragment, index == 0, id=fragment, marks=marks)


@pytest.fixture(scope="module")
def kit_messages(tmp_path_factory, pickled_data):
    """Every line the kit printed to stderr while running each mistake and failure that
    README's table explains, with "error: " taken off."""
    tmp = tmp_path_factory.mktemp("messages")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(printed):
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            patch.setenv(name, "http://127.0.0.1:9")  # a download fails at once
        for variable in ("no_proxy", "NO_PROXY"):
            patch.delenv(variable, raising=False)

        folders = itertools.count()

        def run(script, *args, configs=None, out=None, device="cpu", expected=2):
            module = importlib.import_module(script)
            out = out or tmp / f"out{next(folders)}"
            with pytest.MonkeyPatch.context() as own:
                if configs is not None:
                    own.setattr(module, "CONFIGS", configs)
                status = module.main([*map(str, args), "--out", str(out), "--device", device])
            assert status == expected, (script, args, printed.getvalue()[-2000:])

        data = ["--data-dir", pickled_data]
        run("L2_regularization", *data, configs=[dict(BASE, momentun=0.9)])
        run("L2_regularization", *data, configs=[BASE, dict(BASE, lr="0.1")])
        run("L2_regularization", *data, configs=[])
        run("Original_version_model_multiGPU", *data, "--configs", "12")
        run("Original_version_model_multiGPU", *data, "--subset", "100000")
        run("Original_version_model_multiGPU", *data, "--subset", "20", "--configs", "4")
        run("Original_version_model", "--data-dir", tmp / "nowhere")
        blocker = tmp / "a-file"
        blocker.write_text("not a folder")
        run("Original_version_model", *data, out=blocker / "out")
        with pytest.MonkeyPatch.context() as disk:
            disk.setattr(outputs.shutil, "disk_usage", lambda path: SimpleNamespace(free=2**20))
            run("Original_version_model", *data)
        with pytest.MonkeyPatch.context() as no_cuda:
            no_cuda.setattr(torch.cuda, "is_available", lambda: False)
            run("Original_version_model", *data, device="cuda")
        with pytest.MonkeyPatch.context() as elsewhere:
            elsewhere.chdir(tmp_path_factory.mktemp("no-copy"))  # ./data holds nothing
            run("Original_version_model")
        damaged = write_pickled_batches(tmp / "damaged")
        (damaged / "cifar-10-batches-py" / "data_batch_3").unlink()
        run("Original_version_model", "--data-dir", damaged)
        foreign = tmp / "foreign"
        (foreign / "checkpoints").mkdir(parents=True)
        (foreign / "checkpoints" / "config_1_seed0.ckpt").write_bytes(
            pickle.dumps({"a": 1}, protocol=2))
        run("L2_regularization", *data, "--configs", "1", out=foreign)
        run("L2_regularization", *data, configs=[dict(BASE, lr=1e6)], expected=1)  # diverges
        with pytest.MonkeyPatch.context() as memory:
            def out_of_memory(*args, **kwargs):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

            memory.setattr(train, "_train_step", out_of_memory)
            run("L2_regularization", *data, configs=[BASE], expected=1)
    return [line.removeprefix("error: ") for line in printed.getvalue().splitlines()]


@pytest.mark.parametrize("fragment, opens", list(message_fragments()))
def test_each_message_readme_explains_is_one_the_kit_prints(fragment, opens, kit_messages):
    pattern = message_pattern(fragment)
    find = pattern.match if opens else pattern.search
    assert any(find(line) for line in kit_messages), (
        f"README's {fragment!r} ({pattern.pattern}) is in none of the kit's messages")


def test_the_message_patterns_are_strict_enough():
    """The README-to-regex translation keeps the words: a message that differs in a word,
    or a placeholder filled with a word where a number belongs, does not match."""
    unknown = message_pattern("config_N: unknown key 'x'. Did you mean 'y'?")
    assert unknown.match("config_3: unknown key 'momentun'. Did you mean 'momentum'? Known")
    assert not unknown.match("config_3: unknown setting 'momentun'. Did you mean 'momentum'?")
    nan = message_pattern("config_N: the loss became NaN or infinite at epoch E, step S")
    assert nan.match("config_1: the loss became NaN or infinite at epoch 1, step 10; stopped")
    assert not nan.match("config_1: the loss became NaN or infinite at epoch one, step 10")
    assert message_pattern("<file>: …").match("/data/cifar-10-batches-py/test_batch: damaged")
    assert not message_pattern("<file>: …").match("config_1: something else")
