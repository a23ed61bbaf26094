"""Tiny CIFAR-10 look-alikes, written by the tests in every layout the kit reads.

Each class gets its own colour and stripe direction plus noise, so a network that trains at
all gets well above chance in an epoch or two, and one that does not stays near 10%.
"""
import importlib
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit.data import CLASSES

TRAIN_PER_CLASS = 30
TEST_PER_CLASS = 10
REPO = Path(__file__).resolve().parent.parent
# the real-image test's copy of CIFAR-10 in image folders: CIFARKIT_JPEG_DIR, else ../shared/
SHARED_JPEG = Path(os.environ.get("CIFARKIT_JPEG_DIR") or REPO.parent / "shared" / "cifar10-jpeg")


# The slowest files first: pytest-xdist hands files to its workers in this order, and the
# long ones then never come last, with one worker idle (test_run.py took 320 s alone on a busy
# machine).
SLOWEST_FIRST = ("test_gpu.py", "test_run.py", "test_bad_input.py", "test_distributed.py",
                 "test_readme.py", "test_edit_configs.py", "test_resume_and_signals.py",
                 "test_gpu_check.py")


def pytest_collection_modifyitems(config, items):
    """The slowest files first (SLOWEST_FIRST). Tests marked gpu need CUDA: skipped where
    there is none, run by `pytest -m gpu` (or a plain `pytest`) on a GPU machine."""
    rank = {name: number for number, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (on a GPU machine: python -m pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the training that runs inside the test process. On a shared
    2-core machine, competing OpenMP threads made LeNet at batch 4 eight times slower (one
    test: 77 s against 9 s); the tiny runs here gain little from a second thread when the
    machine is idle. (The tests' subprocesses get OMP_NUM_THREADS=1 for the same reason.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails at once instead of reaching (or waiting for) the network."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def make_images(per_class, seed):
    """uint8 images (N, 3, 32, 32) and labels (N,), grouped by class."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).integers(30, 226, size=(10, 3))
    rows = np.arange(32)
    images, labels = [], []
    for label in range(10):
        stripes = np.sin((rows[:, None] * (label % 5 + 1) + rows[None, :] * (label // 5)) / 2.0)
        base = palette[label][:, None, None] + 40 * stripes[None]
        noise = rng.normal(0, 25, size=(per_class, 3, 32, 32))
        images.append(np.clip(base[None] + noise, 0, 255).astype(np.uint8))
        labels += [label] * per_class
    return np.concatenate(images), np.array(labels)


def write_pickled_batches(folder, train_per_class=TRAIN_PER_CLASS):
    """torchvision's layout: folder/cifar-10-batches-py/{data_batch_1..5,test_batch}."""
    batches = Path(folder) / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    train_images, train_labels = make_images(train_per_class, seed=1)
    order = np.random.default_rng(2).permutation(len(train_labels))
    for number, chunk in enumerate(np.array_split(order, 5), start=1):
        batch = {"data": train_images[chunk].reshape(len(chunk), -1),
                 "labels": train_labels[chunk].tolist()}
        (batches / f"data_batch_{number}").write_bytes(pickle.dumps(batch))
    test_images, test_labels = make_images(TEST_PER_CLASS, seed=3)
    batch = {"data": test_images.reshape(len(test_labels), -1), "labels": test_labels.tolist()}
    (batches / "test_batch").write_bytes(pickle.dumps(batch))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CLASSES)}))
    return Path(folder)


def write_image_folders(folder, suffix=".png"):
    """The image-folder layout: folder/{train,test}/<class>/NNNN.png."""
    for split, per_class, seed in (("train", TRAIN_PER_CLASS, 1), ("test", TEST_PER_CLASS, 3)):
        images, labels = make_images(per_class, seed)
        for index, (image, label) in enumerate(zip(images, labels)):
            class_dir = Path(folder) / split / CLASSES[label]
            class_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(class_dir / f"{index:04d}{suffix}")
    return Path(folder)


def write_tar_archive(folder):
    """The downloaded archive: folder/cifar-10-python.tar.gz."""
    staging = write_pickled_batches(Path(folder) / "staging")
    archive_dir = Path(folder) / "archive"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive_dir


@pytest.fixture(scope="session")
def pickled_data(tmp_path_factory):
    return write_pickled_batches(tmp_path_factory.mktemp("pickled"))


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory):
    return write_image_folders(tmp_path_factory.mktemp("folders"))


@pytest.fixture(scope="session")
def archive_data(tmp_path_factory):
    return write_tar_archive(tmp_path_factory.mktemp("archive"))


def shared_jpeg_or_skip():
    """The full CIFAR-10 JPEG copy beside the checkout; in CI its absence is a failure."""
    if SHARED_JPEG.is_dir():
        return SHARED_JPEG
    if os.environ.get("CI"):
        pytest.fail(f"{SHARED_JPEG} is missing, and CI must run the real-image test.")
    pytest.skip(f"{SHARED_JPEG} not found: the real-image test needs a CIFAR-10 copy in image "
                f"folders (DIR/train/<class>/, DIR/test/<class>/); run it with "
                f"CIFARKIT_JPEG_DIR=DIR python -m pytest")


def run_script(script, out, data_dir, configs, monkeypatch, *flags, device="cpu"):
    """Run ``script`` (a script's module name, or the module itself) in this process as
    ``python SCRIPT.py --data-dir DATA_DIR --out OUT --device DEVICE FLAGS...``, with
    ``configs`` as its CONFIGS; its exit status (argparse's refusals raise SystemExit).
    ``configs`` None: the script's own CONFIGS (``monkeypatch`` may then be None too);
    ``data_dir`` None: no --data-dir (the script's default, ./data)."""
    if isinstance(script, str):
        script = importlib.import_module(script)
    if configs is not None:
        monkeypatch.setattr(script, "CONFIGS", configs)
    data = [] if data_dir is None else ["--data-dir", str(data_dir)]
    return script.main([*data, "--out", str(out), "--device", device, *map(str, flags)])


def run_command(program, *args, cwd=None, env=None):
    """``python PROGRAM ARGS...`` (PROGRAM a file of the repository: a script, predict.py) in
    a process of its own, run from ``cwd``, as a user types it; the CompletedProcess, with
    its output as text."""
    return subprocess.run([sys.executable, str(REPO / program), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def entries(out, results_file="training_result.json"):
    """{(config id, seed): entry} of the results JSON in ``out``: what it shows."""
    return {(entry["id"], entry["seed"]): entry
            for entry in json.loads((Path(out) / results_file).read_text())["configs"]}


def finished_runs(out):
    """{run folder name: {file: bytes}} of every finished or diverged run in ``out``'s store:
    what nothing may ever rename, move, rewrite or delete (a checkpoint is no part of it)."""
    found = {}
    for record_path in sorted(Path(out).glob("runs/*/run.json")):
        if json.loads(record_path.read_text())["status"] in ("finished", "diverged"):
            found[record_path.parent.name] = {
                path.name: path.read_bytes() for path in record_path.parent.iterdir()
                if path.name != "checkpoint.ckpt"}
    return found


def checkpoint_of(out, label="config_1", seed=0):
    """The checkpoint of the latest run of ``label`` with ``seed`` in ``out``'s store (a path
    that does not exist when there is none)."""
    found = Path(out) / "runs" / f"{label}-none" / "checkpoint.ckpt"
    for record_path in sorted(Path(out).glob(f"runs/{label}-*/run.json"),
                              key=lambda path: json.loads(path.read_text())["created"]):
        record = json.loads(record_path.read_text())
        if record["label"] == label and record["seed"] == seed:
            found = record_path.parent / "checkpoint.ckpt"
    return found


UNRENDERED = b"\x89PNG\r\n\x1a\n Software\x00cifarkit (not rendered)"


@pytest.fixture
def unrendered(monkeypatch):
    """The PNGs' figures are built but not rendered (for files that ask with
    ``pytestmark = pytest.mark.usefixtures("unrendered")``), except in tests that ask for
    ``rendered``: rendering is most of what a run costs here (1.7 of the 1.9 s of a run with
    nothing to train), and those tests are not about what the PNGs show."""
    from cifarkit import plots

    monkeypatch.setattr(plots, "png_bytes", unrendered_png)


def unrendered_png(figure):
    """plots.png_bytes without the rendering: the figure is built and closed."""
    from cifarkit import plots

    plots.pyplot().close(figure)
    return UNRENDERED


@pytest.fixture
def rendered(monkeypatch, unrendered):
    """Real PNGs, in a file that renders none otherwise."""
    from cifarkit import plots

    monkeypatch.setattr(plots, "png_bytes", REAL_PNG_BYTES)


def _real_png_bytes():
    from cifarkit import plots
    return plots.png_bytes


REAL_PNG_BYTES = _real_png_bytes()


# ---- helpers that several test files use ----

LONG_RUN = REPO / "tests" / "long_run.py"  # two configs with dropout, and the test hooks


def start_long_run(data_dir, out, pause_at=None, device="cpu", env=None):
    """long_run.py on ``device`` (with ``env`` added); with ``pause_at`` (config, epoch, stop
    check) it waits there, mid-epoch, for the test to kill or signal it (see hooks.py)."""
    # One thread: on a shared 2-core machine, busy OpenMP threads of several processes were
    # seen to slow a LeNet step down twenty-fold.
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    if pause_at:
        env.update(TEST_PAUSE_AT=":".join(map(str, pause_at)), TEST_MARKERS=str(out.parent))
    return subprocess.Popen([sys.executable, str(LONG_RUN), "--data-dir", str(data_dir),
                             "--out", str(out), "--device", device], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_paused(process, out, timeout=300):
    marker = out.parent / "paused-rank0"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.05)


def long_run_results(out):
    """{config id: (status, history without timings, weights)} of a finished long run."""
    results = json.loads((out / "training_result.json").read_text())
    runs = {}
    for entry in results["configs"]:
        history = [{key: value for key, value in record.items() if key != "seconds"}
                   for record in entry["history"]]
        weights = torch.load(out / f"{entry['id']}.pth", weights_only=True)
        runs[entry["id"]] = (entry["status"], history, weights)
    return runs



def labelled_images(count=16):
    """Images filled with a value that encodes their label (label * 20 + 20)."""
    labels = torch.arange(count) % 10
    images = (labels * 20 + 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32)
    return images.contiguous(), labels


def windows_found(padded, image):
    """Every (top, left) at which ``image`` is the 32x32 window of ``padded``."""
    return [(top, left) for top in range(9) for left in range(9)
            if torch.equal(padded[:, top:top + 32, left:left + 32], image)]


def blanked_squares(batch):
    """(top, left, height, width) of the zero pixels of each image: their bounding box, and
    whether they fill it and are the same in every channel."""
    boxes = []
    for image in batch:
        mask = image == 0
        assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])
        rows = mask[0].any(dim=1).nonzero().flatten()
        columns = mask[0].any(dim=0).nonzero().flatten()
        top, left = rows.min().item(), columns.min().item()
        height, width = rows.max().item() - top + 1, columns.max().item() - left + 1
        assert mask[0].sum().item() == height * width  # a filled rectangle, nothing else
        boxes.append((top, left, height, width))
    return boxes


def rewrite(change):
    """A damage: load the results JSON, ``change`` it in place, write it back, as a file
    make_report cannot rebuild from runs (no "weights_file": hand-written, or older), so the
    report reads it as it is."""
    def damage(path):
        results = json.loads(path.read_text())
        results.pop("weights_file", None)
        change(results)
        path.write_text(json.dumps(results))
    return damage


def hand_made(template, number, seed, history, status="finished", **config):
    """A sweep entry built on ``template`` (a real finished one) with the given history,
    [(training seconds of the epoch, test accuracy)], and config changes."""
    records = [dict(template["history"][0], epoch=epoch, seconds=seconds, test_accuracy=accuracy)
               for epoch, (seconds, accuracy) in enumerate(history, start=1)]
    return dict(template, id=f"config_{number}", seed=seed, status=status, history=records,
                config=dict(template["config"], num_epochs=len(history), **config),
                final_test_accuracy=history[-1][1],
                best_test_accuracy=max(accuracy for _, accuracy in history),
                train_seconds=sum(seconds for seconds, _ in history))


def hand_made_sweep(results, reported=True):
    """Three finished configs and an unfinished one, the seconds and accuracies chosen so that
    each answer is different when computed the wrong way."""
    template = results["configs"][0]
    best = {"reported_accuracy": 65.75} if reported else {}
    results["configs"] = [
        hand_made(template, 1, 0, [(5, 30), (5, 40), (5, 50)], lr=0.02,
                  **({"reported_accuracy": 47.63} if reported else {})),
        # Still training, and it would be the fastest: it must not count.
        hand_made(template, 2, 0, [(1, 90)], status="running", lr=0.03),
        # Two seeds: seed 0 reaches 65.75 at epoch 3 (30 s), seed 1 at epoch 4 (48 s); the
        # mean over seeds (the line drawn) first reaches it at epoch 4, after (40 + 48) / 2 s.
        hand_made(template, 3, 0, [(10, 50), (10, 60), (10, 66), (10, 70)], lr=0.001, **best),
        hand_made(template, 3, 1, [(12, 50), (12, 62), (12, 65), (12, 71)], lr=0.001, **best),
        hand_made(template, 12, 0, [(2, 40), (2, 66), (2, 68)], lr=0.1, name="speedrun"),
    ]


class Killed(BaseException):
    """The process dies here: nothing in the kit catches it (as nothing can catch kill -9)."""


def with_checkpoint(out, data_dir, configs):
    """Train ``configs`` with the L2 script; the one of batch_size 30 (10 steps an epoch) runs
    out of memory in its second epoch, and its run keeps its checkpoint (of epoch 1)."""
    real_loss, batches = torch.nn.functional.cross_entropy, []

    def out_of_memory_in_epoch_2(outputs, targets, *args, **kwargs):
        batches.append(len(targets))
        if len(targets) == 30 and batches.count(30) > 10:  # 10 steps an epoch
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(outputs, targets, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "cross_entropy", out_of_memory_in_epoch_2)
        assert run_script("L2_regularization", out, data_dir, configs, patch) == 1


def assert_still_there(before, out):
    """Every finished run of ``before`` is in ``out``'s store, byte for byte."""
    now = finished_runs(out)
    for name, files in before.items():
        assert now.get(name) == files, name


def assert_views_are_the_runs(out, data_dir, results_file="training_result.json"):
    """Each view's weights are its run's weights, and reload to its recorded accuracy on the
    test images of ``data_dir``."""
    from cifarkit import data, train
    from cifarkit import runtime as rt

    results = json.loads((out / results_file).read_text())
    script = importlib.import_module(results["script"][:-3])
    dataset = data.load_cifar10(data_dir, None, results["seed"])
    for entry in results["configs"]:
        record = json.loads((out / entry["run"] / "run.json").read_text())
        assert record["history"] == entry["history"]
        if entry["status"] != "finished":
            continue
        assert (out / entry["weights"]).read_bytes() == \
            (out / entry["run"] / "weights.pth").read_bytes()
        model = script.build_model(entry["config"])
        model.load_state_dict(torch.load(out / entry["weights"], weights_only=True))
        scale, shift = data.normalizer(*script.NORMALIZATION, device="cpu")
        predictions = train.predict(model, dataset.test_images, scale, shift,
                                    rt.Runtime(torch.device("cpu")))
        assert train.accuracy(predictions, dataset.test_labels) == pytest.approx(
            entry["final_test_accuracy"]), entry["id"]


# A script of its own for the tests that edit a model's code (write_probe)
PROBE_SCRIPT = '''
"""A script whose forward reads a module-level value, as students write them."""
import sys
import torch
import torch.nn.functional as F
from torch import nn
from cifarkit import data, train

CONFIGS = [{"num_epochs": 1, "lr": 0.05, "momentum": 0.9, "batch_size": 32}]
HIDDEN_ACT = F.relu
MODEL_SETTINGS_LINE


class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        self.fc1 = nn.Linear(4 * 8 * 8, width)
        self.fc2 = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc2(HIDDEN_ACT(self.fc1(self.conv(x).relu().flatten(1))))


def build_model(config):
    model = Net(BUILD_ARGS)
    INIT_LINE
    return model


def main(argv=None):
    return train.run(train.Script(
        file=__file__, description=__doc__, build_model=build_model, configs=CONFIGS,
        out_dir="modelset/probe", results_file="probe.json",
        normalization=data.TUTORIAL_NORMALIZATION, MODEL_SETTINGS_ARG), argv)
'''


ORIGINAL = {"MODEL_SETTINGS_LINE": "", "BUILD_ARGS": "", "INIT_LINE": "pass",
            "MODEL_SETTINGS_ARG": "model_settings=None"}


def write_probe(folder, **edits):
    """Write PROBE_SCRIPT as ``folder``/probe_script.py, each placeholder of ORIGINAL replaced
    as ``edits`` say (else as ORIGINAL does), and import it afresh; the module."""
    text = PROBE_SCRIPT
    for key, value in dict(ORIGINAL, **edits).items():
        text = text.replace(key, value)
    (folder / "probe_script.py").write_text(text)
    sys.modules.pop("probe_script", None)
    importlib.invalidate_caches()
    return importlib.import_module("probe_script")
