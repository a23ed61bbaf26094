"""What README.md and docs/ say is what the kit does: the first commands README gives run as
written (on the tests' small data), and the file names, messages and config keys the pages
state are what the kit writes, prints and accepts; every relative link leads to a file.

The names, tables and messages are read from the pages themselves (README.md for the scripts'
table and the config keys, docs/troubleshooting.md for the messages), so an edit on either side
that the other does not follow fails here.
"""
import contextlib
import dataclasses
import importlib
import io
import importlib.util
import itertools
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cifarkit import config, data, outputs, plots, signals, store, train
from conftest import (REPO, run_script, unrendered_png, write_image_folders,
                      write_pickled_batches)

# The PNGs are built, not rendered (conftest's unrendered: rendering is most of what a run
# costs here), except in the tests that ask for rendered.
pytestmark = pytest.mark.usefixtures("unrendered")

README = (REPO / "README.md").read_text()
PAGES = {path: path.read_text() for path in [REPO / "README.md", *sorted(REPO.glob("docs/*.md"))]}
TROUBLESHOOTING = PAGES[REPO / "docs" / "troubleshooting.md"]
SCRIPTS = ("Original_version_model", "L2_regularization", "Dropout_regularization",
           "Original_version_model_multiGPU", "Resnet_model")
BASE = {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
quick_looks = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
    "quick_looks", REPO / "benchmarks" / "quick_looks.py"))
quick_looks.__spec__.loader.exec_module(quick_looks)


def table(heading, text=README):
    """The rows (lists of cells) of the table in ``text`` (a page's markdown) whose header row
    starts with ``heading``."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"| {heading}"))
    rows = []
    for line in lines[start + 2:]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


# ---- the first commands README gives ----

@pytest.mark.parametrize("script, command", quick_looks.quick_looks())
def test_each_quick_look_of_readme_runs(script, command, pickled_data, tmp_path):
    """README's first-look commands, as written but on 128 of the tests' images (one batch of
    ResNet's) and for one epoch (their times and accuracies on CIFAR-10:
    benchmarks/quick_looks.py)."""
    words = shlex.split(command)
    assert words[:2] == ["python", script]
    for flag, small in (("--subset", "128"), ("--epochs", "1")):
        if flag in words:
            words[words.index(flag) + 1] = small
    module = importlib.import_module(script.removesuffix(".py"))
    assert module.main(words[2:] + ["--data-dir", str(pickled_data), "--out",
                                    str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "test_accuracy.png").is_file()


# ---- file names ----

@pytest.mark.parametrize("row", table("Report task"), ids=lambda row: row[1].strip("`"))
def test_each_script_writes_the_folder_and_results_json_readme_names(row, monkeypatch):
    script_file, folder, results_file = (cell.strip("`") for cell in row[1:4])
    script = importlib.import_module(script_file.removesuffix(".py"))
    default_weights = next(field.default for field in dataclasses.fields(train.Script)
                           if field.name == "weights_file")
    assert default_weights == "config_{number}.pth"
    called = []
    monkeypatch.setattr(train, "run", lambda script, argv=None: called.append(script) or 0)
    assert script.main([]) == 0
    [handed] = called
    assert Path(handed.file).name == script_file
    assert f"{handed.out_dir}/" == folder
    assert handed.results_file == results_file
    # README: config_N.pth per config, model.pth for the baseline
    assert handed.weights_file == ("model.pth" if script_file == "Original_version_model.py"
                                   else default_weights)


def readme_names(pattern):
    """Every file name of the form ``pattern`` (a regex) that README.md or a docs/ page states."""
    names = {name for text in PAGES.values() for name in re.findall(pattern, text)}
    assert names, f"neither README.md nor docs/ states a name like {pattern}"
    return names


def test_checkpoints_and_extra_seed_weights_have_the_names_readme_gives(pickled_data, tmp_path,
                                                                       monkeypatch, capsys):
    """README and docs/results-format.md: runs/NAME/checkpoint.ckpt while a run is
    unfinished, and config_N_seedS.pth for the weights of the extra seeds of --seeds."""
    script = importlib.import_module("L2_regularization")
    out = tmp_path / "out"
    argv = ["--data-dir", str(pickled_data), "--configs", "2", "--seed", "3", "--seeds", "2",
            "--epochs", "1", "--out", str(out), "--device", "cpu"]
    interrupt(monkeypatch, signal.SIGTERM, training=2)
    assert script.main(argv) == 143  # seed 3 finished, seed 4 stopped
    assert readme_names(r"runs/[\w<>./-]*/(checkpoint\.ckpt)`") == {"checkpoint.ckpt"}
    (checkpoint,) = out.glob("runs/*/checkpoint.ckpt")
    assert json.loads((checkpoint.parent / "run.json").read_text())["seed"] == 4

    monkeypatch.undo()
    assert script.main(argv) == 0  # the same command finishes seed 4
    assert "config_2 (seed 4): resuming from its checkpoint" in capsys.readouterr().out
    for template in readme_names(r"`(config_N_seed\w*\.pth)`"):
        assert (out / template.replace("config_N", "config_2").replace("seedS", "seed4")).is_file()
    assert (out / "config_2.pth").is_file()  # the first seed's, under the plain name
    assert not list(out.glob("runs/*/checkpoint.ckpt"))


# ---- messages ----

MESSAGE_ROWS = table("message starts with", TROUBLESHOOTING)
# The message table's text (docs/troubleshooting.md) -> the regex it stands for: N, B, E, S,
# K, G and R are numbers, another lone
# capital letter a word (C: a class), 'x' any quoted word, … the rest of the message
PLACEHOLDERS = {"config_N": r"config_\d+", "<checkpoint>": r"/\S+\.ckpt",
                "<file>": r"/[^\s:]+", "…": r".*", "DIR": r"\S+",
                **{letter: r"\d+" for letter in "NBESKGR"}}
PLACEHOLDER = re.compile(r"config_N|<checkpoint>|<file>|…|\bDIR\b|'[^']*'|\b[A-Z]\b")
# Messages that only a torchrun job with a dead worker prints: looked for in the source
# (tests/test_distributed.py runs that job); every other message is produced below by running
# the mistake or failure it explains.
FROM_SOURCE = {"error: rank R lost contact with the other ranks",  # two processes each
               "Another run of this kit is training on this CPU: the runs take turns at it…",
               "No turns at this CPU (…): beside another run of this kit…",
               "The run whose turn it is at this CPU (pid P) is stopped (Ctrl-Z?)…",
               "The run whose turn it is at this CPU (pid P) has not ended a step in N s…"}
SOURCE_LINES = [re.sub(r"\{[^{}]*\}", "0", line) for path in sorted(REPO.glob("cifarkit/*.py"))
                for line in path.read_text().splitlines()]


def message_pattern(fragment):
    """The regex a message of the table stands for (see PLACEHOLDERS)."""
    parts, end = [], 0
    for match in PLACEHOLDER.finditer(fragment):
        token = match.group()
        parts += [re.escape(fragment[end:match.start()]),
                  PLACEHOLDERS.get(token, r"'[^']+'" if token.startswith("'") else r"\w+")]
        end = match.end()
    return re.compile("".join(parts) + re.escape(fragment[end:]))


def message_fragments():
    """(fragment, whether it opens the message) for each message the table lists: the first of
    a row's alternatives starts a message, the others may be its continuation."""
    for row in MESSAGE_ROWS:
        for index, fragment in enumerate(re.findall(r"`([^`]+)`", row[0])):
            yield pytest.param(fragment, index == 0, id=fragment)


class Mistakes:
    """Runs scripts in this process the way a user gets each message of the message table,
    collecting everything they print (stdout and stderr)."""

    def __init__(self, tmp, pickled_data, patch):
        self.tmp, self.patch, self.printed = tmp, patch, io.StringIO()
        self.data = ["--data-dir", pickled_data]
        self.folders = itertools.count()

    def run(self, script, *args, configs=None, out=None, device="cpu", expected=2):
        """run_script (conftest), its data folder among ``args``; ``expected``: the status."""
        out = out or self.tmp / f"out{next(self.folders)}"
        with pytest.MonkeyPatch.context() as own, contextlib.redirect_stdout(self.printed), \
                contextlib.redirect_stderr(self.printed):
            try:
                status = run_script(script, out, None, configs, own, *args, device=device)
            except SystemExit as stopped:  # argparse's refusals
                status = stopped.code
        assert status == expected, (script, args, self.printed.getvalue()[-2000:])
        return out

    def report(self, modelset, expected):
        import make_report

        with contextlib.redirect_stdout(self.printed), contextlib.redirect_stderr(self.printed):
            assert make_report.main(["--modelset", str(modelset)]) == expected

    def lines(self):
        """Each printed line, also without a leading "error: " or "prog: error: "."""
        raw = self.printed.getvalue().splitlines()
        return raw + [re.sub(r"^(\S+: )?error: ", "", line) for line in raw]


def interrupt(monkeypatch, signum, times=1, training=1):
    """Send ``signum`` ``times`` times at the first stop check (after the first step) of the
    ``training``-th config (or seed) trained."""
    real_train_config, real_requested = train.train_config, signals.StopRequest.requested
    trainings, sent = [], []

    def counted(*args):
        trainings.append(None)
        return real_train_config(*args)

    def ask(stop):
        while len(trainings) == training and len(sent) < times:
            sent.append(signum)
            signal.raise_signal(signum)  # the kit's handler runs here
        return real_requested(stop)

    monkeypatch.setattr(train, "train_config", counted)
    monkeypatch.setattr(signals.StopRequest, "requested", ask)


@pytest.fixture(scope="module")
def kit_messages(tmp_path_factory, pickled_data):
    tmp = tmp_path_factory.mktemp("messages")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "png_bytes", unrendered_png)  # built, not rendered
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            patch.setenv(name, "http://127.0.0.1:9")  # a download fails at once
        for name in ("no_proxy", "NO_PROXY"):
            patch.delenv(name, raising=False)
        kit = Mistakes(tmp, pickled_data, patch)
        _configs_and_flags(kit)
        _devices(kit)
        _output_folders(kit, tmp)
        _data(kit, tmp, tmp_path_factory)
        _failures_and_signals(kit)
        _the_report(kit, tmp)
    return kit.lines()


def _configs_and_flags(kit):
    data = kit.data  # the flags
    kit.run("L2_regularization", *data, configs=[dict(BASE, momentun=0.9)])
    kit.run("L2_regularization", *data, configs=[BASE, dict(BASE, lr="0.1")])
    kit.run("L2_regularization", *data, configs=[])
    kit.run("L2_regularization", *data, configs=dict(BASE))
    kit.run("L2_regularization", *data, configs=[dict(BASE, name="2")])
    kit.run("L2_regularization", *data, configs=[dict(BASE, name="a,b")])
    kit.run("L2_regularization", *data, configs=[dict(BASE, lr=float("inf"))])
    with pytest.MonkeyPatch.context() as not_a_model:
        script = importlib.import_module("L2_regularization")
        for model in (None, torch.nn.Linear(3, 10), torch.nn.LazyLinear(10), torch.nn.Flatten(),
                      torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 5))):
            not_a_model.setattr(script, "build_model", lambda config, model=model: model)
            kit.run("L2_regularization", *data, configs=[BASE])
    three = [BASE, dict(BASE, batch_size=32), dict(BASE, name="recipe")]
    kit.run("Original_version_model_multiGPU", *data, "--configs", "13", configs=three)
    kit.run("Original_version_model_multiGPU", *data, "--subset", "100000", configs=three)
    kit.run("Original_version_model_multiGPU", *data, "--subset", "20", "--configs", "2",
            configs=three)
    kit.run("Original_version_model", *data, "--seed", "4294967296")


def _devices(kit):
    with pytest.MonkeyPatch.context() as no_cuda:
        no_cuda.setattr(torch.cuda, "is_available", lambda: False)
        kit.run("Original_version_model", *kit.data, device="cuda")
    with pytest.MonkeyPatch.context() as gpus:  # refused before any GPU is touched
        gpus.setattr(torch.cuda, "is_available", lambda: True)
        gpus.setattr(torch.cuda, "device_count", lambda: 2)
        kit.run("Original_version_model_multiGPU", *kit.data, "--compile", device="auto")
        gpus.setattr(torch.cuda, "device_count", lambda: 1)
        for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"),
                            ("LOCAL_WORLD_SIZE", "2")):  # as torchrun sets them
            gpus.setenv(name, value)
        kit.run("Original_version_model", *kit.data, device="auto")
    with pytest.MonkeyPatch.context() as mac:
        mac.setattr(torch.backends.mps, "is_available", lambda: False)
        kit.run("Original_version_model", *kit.data, device="mps")
        mac.setattr(torch.backends.mps, "is_available", lambda: True)  # refused before MPS
        kit.run("Original_version_model", *kit.data, "--amp", "on", device="mps")
    with pytest.MonkeyPatch.context() as no_compiler:
        no_compiler.setenv("CXX", "/nonexistent/g++")
        no_compiler.setattr(sysconfig, "get_paths", lambda *args, **kwargs: {"include": "/no"})
        kit.run("L2_regularization", *kit.data, "--compile", configs=[BASE])


def _output_folders(kit, tmp):
    data = kit.data  # the flags
    blocker = tmp / "a-file"
    blocker.write_text("not a folder")
    kit.run("Original_version_model", *data, out=blocker / "out")
    with pytest.MonkeyPatch.context() as disk:
        disk.setattr(outputs.shutil, "disk_usage",
                     lambda path: SimpleNamespace(free=2**20, total=2**30))
        kit.run("Original_version_model", *data)
    with pytest.MonkeyPatch.context() as virtual:  # /proc, /sys: a file system of no disk
        virtual.setattr(outputs.shutil, "disk_usage",
                        lambda path: SimpleNamespace(free=0, total=0))
        kit.run("Original_version_model", *data)
    kit.run("Original_version_model", *data, out=data[1])
    source = tmp / "source"
    source.mkdir()
    (source / "train_me.py").write_text("print('mine')")
    kit.run("Original_version_model", *data, out=source)
    for special in (Path("/"), Path.home()):  # refused before anything is written
        kit.run("Original_version_model", *data, out=special)
    in_the_way = tmp / "in-the-way"
    (in_the_way / "loss.png").mkdir(parents=True)
    kit.run("Original_version_model", *data, out=in_the_way)
    unmounted = tmp / "unmounted"
    unmounted.mkdir()
    (unmounted / "runs").symlink_to(tmp / "no-such-scratch-disk")
    kit.run("Original_version_model", *data, out=unmounted)
    edited = kit.run("L2_regularization", *data, configs=[BASE], expected=0)
    kit.run("Dropout_regularization", *data, configs=[BASE], out=edited)  # its results JSON
    kit.run("L2_regularization", *data, configs=[BASE], out=edited / "runs")  # a run store
    kit.run("L2_regularization", *data, configs=[dict(BASE, lr=0.02)], out=edited, expected=0)
    kit.run("L2_regularization", *data, configs=[BASE], out=edited, expected=0)  # undone
    kit.run("L2_regularization", *data, configs=[BASE, dict(BASE, lr=0.02)], out=edited,
            expected=0)  # a config added: the lr 0.02 run shows again
    kit.run("L2_regularization", *data, configs=[dict(BASE, lr=0.02), BASE], out=edited,
            expected=0)  # reordered
    kit.run("L2_regularization", *data, configs=[BASE], out=edited, expected=0)  # removed
    (edited / "config_1.pth").unlink()
    (edited / "config_1.pth").write_bytes(b"my own weights")  # not a view of any run
    kit.run("L2_regularization", *data, configs=[BASE], out=edited, expected=0)
    stranded = tmp / "stranded"  # an older kit's move: its hidden files, the record deleted
    stranded.mkdir()
    (stranded / ".ledger-0123abcd-0").write_bytes(b"weights on their way")
    kit.run("L2_regularization", *data, configs=[BASE], out=stranded)
    (edited / "training_result.json").write_text("not JSON")
    kit.run("L2_regularization", *data, configs=[BASE], out=edited, expected=0)
    (edited / "analysis.ipynb").write_text("{}")  # a notebook saved among the results
    kit.run("L2_regularization", *data, configs=[BASE], out=edited)
    (edited / "analysis.ipynb").unlink()
    with pytest.MonkeyPatch.context() as busy:  # a loaded machine, a slow first epoch
        script, calls = importlib.import_module("L2_regularization"), []
        real_build = script.build_model

        def slow_start(module, inputs):
            calls.append(1)
            time.sleep(0.05 if module.training and len(calls) < 80 else 0)  # > 2x, loaded too

        def build_model(config):
            model = real_build(config)
            model.register_forward_pre_hook(slow_start)
            return model

        busy.setattr(script, "build_model", build_model)
        busy.setattr(os, "getloadavg", lambda: (9.5, 9.0, 8.0))
        kit.run("L2_regularization", *data, configs=[dict(BASE, batch_size=4, num_epochs=3)],
                expected=0)


def _data(kit, tmp, tmp_path_factory):
    kit.run("Original_version_model", "--data-dir", tmp / "nowhere")
    with pytest.MonkeyPatch.context() as elsewhere:
        elsewhere.chdir(tmp_path_factory.mktemp("no-copy"))  # ./data holds nothing
        kit.run("Original_version_model")
        damaged_download = tmp_path_factory.mktemp("damaged-download")
        write_pickled_batches(damaged_download / "data")  # fails torchvision's checksums
        elsewhere.chdir(damaged_download)
        kit.run("Original_version_model")
        held = store.lock(damaged_download / "data", blocking=True)  # another download's
        elsewhere.setattr(data, "DOWNLOAD_WAIT", 0.2)
        elsewhere.delenv("RANK", raising=False)
        try:
            kit.run("Original_version_model")
        finally:
            os.close(held)
    damaged = write_pickled_batches(tmp / "damaged")
    (damaged / "cifar-10-batches-py" / "data_batch_3").unlink()
    kit.run("Original_version_model", "--data-dir", damaged)
    short = write_image_folders(tmp / "short")
    next((short / "test" / "ship").iterdir()).unlink()  # 9 ship test images, 10 needed
    kit.run("Original_version_model", "--data-dir", short, "--subset", "300")


def _failures_and_signals(kit):
    foreign = kit.run("L2_regularization", *kit.data, "--configs", "1", expected=0)
    (record_path,) = foreign.glob("runs/*/run.json")  # made unfinished by hand, with a file
    record = json.loads(record_path.read_text())  # of another program as its checkpoint
    record_path.write_text(json.dumps(dict(record, status="running")))
    (record_path.parent / "weights.pth").unlink()
    (record_path.parent / "checkpoint.ckpt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    kit.run("L2_regularization", *kit.data, "--configs", "1", out=foreign)
    with pytest.MonkeyPatch.context() as denied:  # intact, but not ours to read
        denied.setattr(torch, "load", lambda path, **kwargs: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied", str(path))))
        kit.run("L2_regularization", *kit.data, "--configs", "1", out=foreign)
    kit.run("L2_regularization", *kit.data, configs=[dict(BASE, lr=1e6)], expected=1)
    with pytest.MonkeyPatch.context() as memory:
        def out_of_memory(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

        memory.setattr(torch.nn.functional, "cross_entropy", out_of_memory)
        kit.run("L2_regularization", *kit.data, configs=[BASE], expected=1)
    with pytest.MonkeyPatch.context() as full:  # the disk fills as the weights are written
        real_save = torch.save
        full.setattr(outputs.torch, "save", lambda state, file: real_save(state, file)
                     if "format" in state else (_ for _ in ()).throw(RuntimeError("disk full")))
        kit.run("L2_regularization", *kit.data, configs=[BASE], expected=1)
    with pytest.MonkeyPatch.context() as ctrl_c:
        interrupt(ctrl_c, signal.SIGINT, times=2)  # the second: at once
        kit.run("L2_regularization", *kit.data, configs=[BASE], expected=130)
    with pytest.MonkeyPatch.context() as ctrl_c:
        def pressed_while_loading(*args, **kwargs):
            raise KeyboardInterrupt

        ctrl_c.setattr(data, "load_cifar10", pressed_while_loading)
        kit.run("L2_regularization", *kit.data, expected=130)
    with pytest.MonkeyPatch.context() as term:
        def terminated_while_loading(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the kit's handler interrupts this

        term.setattr(data, "load_cifar10", terminated_while_loading)
        kit.run("L2_regularization", *kit.data, expected=143)


def _the_report(kit, tmp):
    modelset = tmp / "modelset"
    (modelset / "broken").mkdir(parents=True)
    (modelset / "broken" / "training_result.json").write_text("not JSON")
    kit.report(modelset, expected=0)
    (modelset / "REPORT.md").unlink()
    (modelset / "REPORT.md").mkdir()  # a folder where the report goes
    kit.report(modelset, expected=1)
    (modelset / "figures" / "mine.txt").write_text("mine")  # would go with figures/
    kit.report(modelset, expected=2)
    shutil.rmtree(modelset / "figures")
    (modelset / "figures").symlink_to(tmp)
    kit.report(modelset, expected=2)
    (modelset / "figures").unlink()
    (modelset / "figures").write_text("mine")
    kit.report(modelset, expected=2)
    (modelset / "figures").unlink()
    (modelset / "stored" / "runs").mkdir(parents=True)
    kit.report(modelset / "stored" / "runs", expected=2)
    mine = tmp / "mine"
    mine.mkdir()
    (mine / "REPORT.md").write_text("# my own notes\n")
    kit.report(mine, expected=2)
    (mine / "REPORT.md").unlink()
    (mine / "notebook.py").write_text("print('mine')\n")
    kit.report(mine, expected=2)
    kit.report(Path(kit.data[1]), expected=2)  # the data folder
    (modelset / "l2" / "runs").mkdir(parents=True)  # a script's folder inside: a modelset
    kit.run("L2_regularization", *kit.data, configs=[BASE], out=modelset)


@pytest.mark.parametrize("fragment, opens", list(message_fragments()))
def test_each_message_readme_explains_is_one_the_kit_prints(fragment, opens, kit_messages):
    pattern = message_pattern(fragment)
    find = pattern.match if opens else pattern.search
    if fragment in FROM_SOURCE:
        assert any(pattern.search(line) for line in SOURCE_LINES), fragment
        return
    assert any(find(line) for line in kit_messages), (
        f"docs/troubleshooting.md's {fragment!r} ({pattern.pattern}) is in none of the kit's "
        f"messages")


def test_the_message_patterns_are_strict_enough():
    """The table-to-regex translation keeps the words: a message that differs in a word,
    or a placeholder filled with a word where a number belongs, does not match."""
    unknown = message_pattern("config_N: unknown key 'x'. Did you mean 'y'?")
    assert unknown.match("config_3: unknown key 'momentun'. Did you mean 'momentum'? Known")
    assert not unknown.match("config_3: unknown setting 'momentun'. Did you mean 'momentum'?")
    nan = message_pattern("config_N: the loss became NaN or infinite at epoch E, step S")
    assert nan.match("config_1: the loss became NaN or infinite at epoch 1, step 10; stopped")
    assert not nan.match("config_1: the loss became NaN or infinite at epoch one, step 10")
    assert message_pattern("<file>: …").match("/data/cifar-10-batches-py/test_batch: damaged")
    assert not message_pattern("<file>: …").match("config_1: something else")


# ---- config keys ----

def test_the_key_table_lists_every_key_a_config_may_hold():
    """README's key table names each training key the kit accepts and each model setting a
    script declares, and no key the kit would refuse."""
    declared = set(config.TRAINING_KEYS)
    for script in SCRIPTS:
        declared |= set(getattr(importlib.import_module(script), "MODEL_SETTINGS", {}))
    listed = [row[0].strip("`") for row in table("key")]
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == declared
    assert {"reported_accuracy", "reported_seconds", "dropout"} <= set(listed)


# ---- links ----

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text):
    """The targets of the markdown links and images in ``text`` that point into the
    repository (no URL, no link within the page), without their #anchor."""
    outside = ("http://", "https://", "mailto:", "#")
    return [target.split("#")[0] for target in LINK.findall(text)
            if not target.startswith(outside)]


def test_every_relative_link_in_readme_and_docs_leads_to_a_file():
    broken = [f"{path.relative_to(REPO)}: {target}" for path, text in PAGES.items()
              for target in relative_links(text) if not (path.parent / target).exists()]
    assert not broken, broken
    # every docs/ page and figure is reachable from the README, directly or through docs/
    linked = {(path.parent / target).resolve() for path, text in PAGES.items()
              for target in relative_links(text)}
    assert {*REPO.glob("docs/*.md"), *REPO.glob("docs/*.png")} <= linked


def test_the_link_finder_finds_links_and_skips_urls():
    text = "[a](docs/a.md) ![fig](b.png) [c](https://x.org/c.md) [d](#here) [e](c.md#part)"
    assert relative_links(text) == ["docs/a.md", "b.png", "c.md"]
