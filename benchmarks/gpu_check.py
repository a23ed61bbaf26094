"""Does the kit work on this machine's GPU(s), and how fast is it? Run this first.

    python benchmarks/gpu_check.py --data-dir DIR --out gpu-check           # on the GPU(s)
    python benchmarks/gpu_check.py --data-dir DIR --out gpu-check --quick   # the same, on the CPU

Every check runs the real scripts as a user would, each as a subprocess with a time limit,
and then checks what they left behind:

  script-*       each of the five scripts, 1 epoch on a subset: exit 0, a finished entry per
                 config in its results JSON, the PNGs, and weights that reload into the
                 script's build_model(config) and score the accuracy the JSON records
  weights-on-cpu GPU-trained weights load as the README says where no GPU is visible
  precision-*    the Task 3 (DataParallel) script on every visible GPU, then one real training
                 step with forward hooks on every Conv2d and Linear: the precision the layers
                 really computed in (dtype, and TF32 told from fp32 by the rounding error) against
                 the precision the results JSON records
  dp-replicas    the same step through DataParallel's replica threads, two replicas on one
                 device (so one GPU checks it): the dtype each replica really computed in
  fp16-scaler    fp16 with loss scaling forced on a GPU that has bf16 (a V100's or T4's path)
  compile        one --compile epoch: plain weights that rescore to the recorded accuracy
  torchrun       DistributedDataParallel, one process per GPU (NCCL): world_size and backend
  resume         SIGTERM mid-epoch, exit 143, then the same command again: the same weights
                 as a run never interrupted (bit for bit on the CPU; within a tolerance on GPUs)
  speed-*        one ResNet-18 epoch (config "best") on 25,000 images, in bf16 and in fp32: images/s
                 (--quick: the Task 3 LeNet, config "speedrun", on 128 images)
  resnet-best, resnet-recipe
                 the report's best ResNet-18 run (89.56%, 305.84 s on one A100) and the fast
                 recipe with 3 seeds (aim: a mean of 94% in at most 40 s on one H100/H200),
                 beside those figures: the mean and each seed
  pytest-*       with --pytest: `pytest -m gpu` and the whole test suite

A failed check is recorded with the tail of its output and the others still run. Writes
OUT/gpu_check.json (every figure; every failure with its output tail), OUT/gpu_check.md (one
table row per check) and OUT/checks/<check>/ (each run's outputs and log), and prints the
table. Exit status: 0 every check passed, 1 a check failed, 2 bad input.

Budget on one H100/H200, estimated (PLAN below, check by check; nothing measured yet): about
8 minutes in all (7-9), the most important checks first, the report saved after each one. The
two long ResNet-18 runs (the report's 25 epochs, the recipe's 3 seeds) take about half, so a
machine lent for 5 minutes at a time runs it as two commands:
    --skip resnet-best,resnet-recipe     (every path: about 4 minutes)
    --only resnet-best,resnet-recipe     (accuracy and time against the report: 4-6 minutes)
--pytest adds the test suite's own time. --quick runs every check on the CPU on tiny subsets,
1-2 epochs, torchrun with gloo and 2 processes (the tests run this, so it never rots): its
figures mean nothing, only pass and fail do. --only ID,ID reruns some checks.
"""
import argparse
import contextlib
import ctypes
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import Original_version_model  # noqa: E402
import Original_version_model_multiGPU  # noqa: E402
from cifarkit import cli, config, data, results, signals, train  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402

# What each check runs: (on the GPU(s), with --quick on the CPU). The comments give the
# expected time of each check on one H200 (16 CPU cores), none of it measured yet: about 8
# minutes in all (~7 at the low ends, ~9 at the high ends; dp-replicas ~8 s): starting
# Python with torch and CUDA costs ~5 s a process, decoding the 60,000 JPEGs ~5 s, ResNet-18
# trains at roughly 10-20k images/s in bf16 at batch 128, more at 512. --quick needs a copy with at least 500
# training images a class (the resume check's epoch must pass 1000 mini-batches of 4).
PLAN = {
    "device": ("cuda", "cpu"),
    # script-*: 1 epoch on this many images, then the weights rescored (~15-20 s a script,
    # ~90 s for the five). Configs are chosen by name, never by position (a student may
    # reorder CONFIGS): ResNet's report best and recipe; every config of the others.
    "script_subset": (5000, 200),
    "script_configs": ({"Resnet_model.py": "best,recipe"},
                       {"Original_version_model_multiGPU.py": "speedrun",
                        "Resnet_model.py": "best"}),
    # weights-on-cpu (~15 s); precision-*: the Task 3 script's speedrun for 1 epoch, then one
    # step with hooks (~20 s, then ~8 s). On the CPU "--amp on" stands in for "off", which
    # is the same as "auto" there for LeNet.
    "precision_subset": (2000, 200),
    "precision_amps": (("auto", "off"), ("auto", "on")),
    # torchrun: ResNet-18 config 1, 1 epoch, one process per GPU (~20 s)
    "torchrun_subset": (5000, 128),
    "cpu_processes": (None, 2),
    # resume: the baseline (batch 4) for 2 epochs, three runs (~30 s). SIGTERM goes out when
    # epoch 2 prints its loss at mini-batch 1000: the epoch must be longer than 1000 steps.
    "resume_subset": (8000, 5000),  # 250 steps after the signal line: no race with the end
    "resume_epochs": (2, 2),
    # speed-*: ResNet-18's best (batch 128) on 25,000 images (196 steps an epoch: enough
    # for a steady rate; the full set cost ~25 s more, which the recipe's seeds now use);
    # epoch 2 is the figure, epoch 1 carries cudnn's autotuning (~15 s bf16, ~20 s fp32)
    "speed_subset": (25000, 128),
    # --quick times the Task 3 LeNet (batch 128) instead: the same path (a script, its JSON,
    # images/s), while one ResNet-18 step in bf16 emulated on a CPU without it takes minutes
    "speed_run": (("Resnet_model.py", "best"), ("Original_version_model_multiGPU.py",
                                                 "speedrun")),
    "speed_epochs": (2, 1),
    # resnet-best: 25 epochs (~100-140 s); resnet-recipe: 16 epochs at batch 512, three
    # seeds (the aim is a mean of 3): per seed ~40 s of training if it meets the aim (27-53 s
    # at 15-30k images/s) plus ~10 s of test passes (with TTA) and checkpoints, once ~10 s
    # to start (~130-200 s).
    "best_subset": (None, 128),
    "recipe_subset": (None, 128),
    # --quick runs the Task 3 LeNet's recipe: the same path (a script's recipe over seeds,
    # judged on their mean), where one ResNet-18 step at batch 512 takes 20 s on a CPU
    "recipe_script": ("Resnet_model.py", "Original_version_model_multiGPU.py"),
    "recipe_seeds": (3, 1),  # --quick: one (the mean over seeds is tested on its own)
    "long_run_epochs": (None, 1),  # None: the config's own num_epochs
    # seconds before a run is stopped and its check failed (a hang, not a slow GPU)
    "timeout_run": (240, 600),
    "timeout_long_run": (480, 600),
    "timeout_pytest": (1800, 1800),
}

SCRIPTS = {  # script: the results JSON it writes
    "Original_version_model.py": "training_loss.json",
    "L2_regularization.py": "training_result.json",
    "Dropout_regularization.py": "training_result.json",
    "Original_version_model_multiGPU.py": "training_result.json",
    "Resnet_model.py": "Resnet_model_result.json",
}
SHORT_NAMES = {"Original_version_model.py": "baseline", "L2_regularization.py": "l2",
               "Dropout_regularization.py": "dropout",
               "Original_version_model_multiGPU.py": "multigpu", "Resnet_model.py": "resnet"}
PNGS = results.PLOT_FILES
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# the report's best ResNet-18 (the config named "best"): test accuracy %, seconds, one A100. The
# report's figures, not read from CONFIGS, which a student may edit or reorder.
REPORT_BEST = (89.56, 305.84)
BEST_FLOOR = 88.0  # resnet-best fails below this (the report's, less the JPEG copy's point)
REPORT_IMAGES_PER_S = 25 * 50_000 / REPORT_BEST[1]  # that run's average speed
# The recipe's aim: a mean test accuracy of at least 94% over the seeds, each trained in at
# most 40 s on one H100/H200 (README), in at most 25 epochs (the report's budget)
RECIPE_AIM = (94.0, 40.0)
RECIPE_MAX_EPOCHS = 25

# Rescored weights must give the recorded accuracy: exactly when trained and scored on the
# CPU; within a point when a GPU is involved, because a fresh process may get other cudnn
# kernels (cudnn.benchmark), and a CPU others again, whose last-bit differences flip images
# whose two best logits tie in bf16. Wrong or unloadable weights miss by far more.
RESCORE_POINTS_WITH_A_GPU = 1.0
# A resumed GPU run may differ from the uninterrupted one: cudnn.benchmark can pick other
# kernels in the new process, atomics add in any order, and bf16 rounding then amplifies the
# last-bit differences. Allowed: test accuracy within 1 point, and weights within 5% of the
# distance training moved them. Replaying or skipping the 1000 mini-batches before the
# SIGTERM (a quarter of the run), the mistakes worth catching, moves them several times
# further. On the CPU the kit promises, and this checks, bit-identical weights and history.
RESUME_ACCURACY_POINTS = 1.0
RESUME_WEIGHTS_SHARE = 0.05
RESUME_SIGNAL_LINE = "epoch 2: batch 1000 loss"  # the baseline's running-loss line

# A Conv2d or Linear output in fp32 is "tf32" when it is further than this from a float64
# recomputation, relative to its largest value: fp32 kernels stay near 1e-6 (FFT or
# Winograd ones below 1e-5), TF32's 10-bit inputs give 3e-4 or more (tests: 4e-7 and 8e-4).
TF32_THRESHOLD = 1e-4
PROBE_CONFIG = "speedrun"  # the Task 3 config whose precision is probed: LeNet, batch 128
ALLOWED_COMPUTE = {  # precision in the results JSON: what the layers may compute in
    "fp32": {"fp32"},
    "tf32": {"tf32", "fp32"},  # TF32 allowed; small layers may still take fp32 kernels
    "bf16 autocast": {"bf16"},
    "fp16 autocast with loss scaling": {"fp16"},
}
AMP_DTYPES = {"fp32": None, "tf32": None, "bf16 autocast": torch.bfloat16,
              "fp16 autocast with loss scaling": torch.float16}
TAIL_CHARS = 3000


class CheckFailed(Exception):
    """A check's verdict, with the tail of the output that shows why."""

    def __init__(self, message, tail=""):
        super().__init__(message)
        self.message, self.tail = message, tail


@dataclass
class Setting:
    """What every check needs."""
    data_dir: Path
    out: Path
    plan: dict     # PLAN's values for this mode
    gpus: int      # visible CUDA GPUs, 0 with --quick
    quick: bool
    record: Path = None  # --record: where the record is copied after every check

    @property
    def device(self):
        return self.plan["device"]


# ---- running the scripts ----

def start_logged(command, log, env=None):
    """Start ``command`` in the repository root, its output (unbuffered) into the file ``log``,
    in a process group of its own so that torchrun's workers can be stopped with it."""
    command = [str(part) for part in command]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as file:
        file.write(f"$ {shlex.join(command)}\n")
        file.flush()
        return subprocess.Popen(command, cwd=REPO, stdout=file, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                                start_new_session=True, preexec_fn=die_with_parent)


def die_with_parent():
    """In a child, before it runs: SIGKILL when this process dies, even by kill -9 (a lent
    machine's time limit), so no training is left holding the GPU (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_group(process):
    """Kill ``process``, its group, and every process below it: torchrun's agent starts each
    worker in a session of its own, which killing the group does not reach. The group is
    stopped first, so that no new worker starts while they are counted."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGSTOP)
    below = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def descendants(pid):
    """The processes below ``pid``, as Linux's /proc tells (none elsewhere)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def wait_logged(process, log, timeout):
    """The exit status of ``process``; past ``timeout`` s it is killed and the check fails.
    Ctrl-C on this command stops it too: no GPU job is left running behind."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process)
        raise CheckFailed(f"{log.stem}: stopped after {timeout} s (time limit)", tail(log))
    except BaseException:
        stop_group(process)
        raise


def run_ok(command, log, timeout, env=None):
    """Run ``command`` to the end; the check fails unless it exits with 0."""
    status = wait_logged(start_logged(command, log, env), log, timeout)
    if status != 0:
        raise CheckFailed(f"{log.stem}: exit status {status}: {last_line(log)}", tail(log))


def tail(log, chars=TAIL_CHARS):
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    return text[-chars:]


def last_line(log):
    """The last line of a failed run's output: usually its error message."""
    lines = [line.strip() for line in tail(log).splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def script_command(script, setting, out, *args, launcher=()):
    """``python [launcher] script`` on this check's data and device, output into ``out``."""
    return [sys.executable, *launcher, REPO / script, "--data-dir", setting.data_dir,
            "--out", out, "--device", setting.device, *args]


def subset_args(subset):
    return ["--subset", subset] if subset else []


def read_results(out, script):
    path = out / SCRIPTS[script]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckFailed(f"{path}: no readable results JSON ({error})") from None


def finished_entries(results, expected_ids):
    """The results' config entries, once each expected config has one, finished."""
    entries = results["configs"]
    found = sorted(entry["id"] for entry in entries)
    if found != sorted(expected_ids):
        raise CheckFailed(f"results JSON holds {found}, expected {sorted(expected_ids)}")
    unfinished = [f"{entry['id']}: {entry['status']}" for entry in entries
                  if entry["status"] != "finished"]
    if unfinished:
        raise CheckFailed(f"not finished: {', '.join(unfinished)}")
    return entries


def selected_ids(script, configs):
    """config_N of every config ``--configs`` selects (all when None)."""
    module = importlib.import_module(Path(script).stem)
    return [f"config_{number}" for number, _ in cli.select_configs(module.CONFIGS, configs)]


# ---- the checks: each returns its figures or raises CheckFailed ----

def check_script(setting, script, folder):
    """One epoch of the script's configs on a subset: every output there and sound."""
    plan, out = setting.plan, folder / "run"
    configs = plan["script_configs"].get(script)
    command = script_command(script, setting, out, "--epochs", 1,
                             *subset_args(plan["script_subset"]),
                             *(["--configs", configs] if configs else []))
    run_ok(command, folder / "run.log", plan["timeout_run"])
    results = read_results(out, script)
    entries = finished_entries(results, selected_ids(script, configs))
    broken = [name for name in PNGS if not (out / name).is_file()
              or (out / name).read_bytes()[:8] != PNG_MAGIC]
    if broken:
        raise CheckFailed(f"PNGs missing or not PNG: {', '.join(broken)}")
    gap = rescore_gap(setting, out / SCRIPTS[script], entries, folder, setting.device)
    notes = [data_parallel_note(results, setting)] if "multiGPU" in script else []
    accuracies = [entry["final_test_accuracy"] for entry in entries]
    seconds = sum(entry["train_seconds"] for entry in entries)
    return {"figure": f"{len(entries)} config(s) finished, {seconds:.1f} s of training, test "
                      f"accuracy {min(accuracies):.2f}-{max(accuracies):.2f}%; reloaded "
                      f"weights score it within {gap:.2f} points", "notes": notes}


def rescore_gap(setting, results_path, entries, folder, device, env=None):
    """Largest gap, in points, between the recorded accuracies and the saved weights
    reloaded as the README says and scored again in a fresh process on ``device`` (with
    --quick, on the CPU, in this one)."""
    scores_path = folder / f"rescored-{device}.json"
    if setting.quick:  # the CPU, as this process: no fresh process needed (each costs ~4 s)
        scores = rescore(results_path, setting.data_dir, device, setting.plan["script_subset"])
    else:
        run_ok([sys.executable, Path(__file__).resolve(), "--probe", "rescore", "--results",
                results_path, "--data-dir", setting.data_dir, "--device", device,
                *subset_args(setting.plan["script_subset"]), "--probe-out", scores_path],
               folder / f"rescore-{device}.log", setting.plan["timeout_run"], env)
        scores = json.loads(scores_path.read_text())
    gaps = {entry["weights"]: abs(scores[entry["weights"]] - entry["final_test_accuracy"])
            for entry in entries}
    allowed = 0.0 if setting.device == device == "cpu" else RESCORE_POINTS_WITH_A_GPU
    wrong = [f"{name}: {scores[name]:.2f}% reloaded, {entry['final_test_accuracy']:.2f}% "
             f"recorded" for entry in entries for name in [entry["weights"]]
             if gaps[name] > allowed]
    if wrong:
        raise CheckFailed(f"reloaded weights miss the recorded accuracy by more than "
                          f"{allowed} points: {'; '.join(wrong)}")
    return max(gaps.values())


def check_weights_on_cpu(setting, folder):
    """Weights trained on the GPU load on a machine without one, with the README's line
    (torch.load(path, weights_only=True)), and score the recorded accuracy there."""
    script, out = "L2_regularization.py", folder / "run"
    run_ok(script_command(script, setting, out, "--configs", 1, "--epochs", 1,
                          *subset_args(setting.plan["script_subset"])),
           folder / "run.log", setting.plan["timeout_run"])
    results = read_results(out, script)
    entries = finished_entries(results, ["config_1"])
    gap = rescore_gap(setting, out / SCRIPTS[script], entries, folder, "cpu",
                      env={"CUDA_VISIBLE_DEVICES": ""})  # as on a laptop: no GPU visible
    return {"figure": f"{entries[0]['weights']} loads with no GPU visible and scores "
                      f"{entries[0]['final_test_accuracy']:.2f}% within {gap:.2f} points"}


def check_fp16_scaler(setting, folder):
    """fp16 with loss scaling, forced on a GPU that has bf16 (the path of a V100 or T4): a
    Task 3 config trains, the JSON says so, and its weights rescore in that precision."""
    script, out = "Original_version_model_multiGPU.py", folder / "run"
    run_ok(script_command(script, setting, out, "--configs", PROBE_CONFIG, "--epochs", 1,
                          "--amp", "on", *subset_args(setting.plan["script_subset"])),
           folder / "run.log", setting.plan["timeout_run"], env={rt.FORCE_FP16: "1"})
    return rescored_entry(setting, script, out, PROBE_CONFIG, folder,
                          {"precision": "fp16 autocast with loss scaling"})


def check_compile(setting, folder):
    """One --compile epoch of a LeNet: the JSON says compiled, the weights saved are plain
    (no torch.compile prefix) and rescore to the recorded accuracy."""
    script, out = "L2_regularization.py", folder / "run"
    run_ok(script_command(script, setting, out, "--configs", 1, "--epochs", 1, "--compile",
                          *subset_args(setting.plan["script_subset"])),
           folder / "run.log", setting.plan["timeout_run"])
    return rescored_entry(setting, script, out, "1", folder, {"compiled": True})


def rescored_entry(setting, script, out, configs, folder, expected):
    """The one finished entry of ``configs``, checked for the ``expected`` {field: value},
    its weights rescored; its figure."""
    (entry,) = finished_entries(read_results(out, script), selected_ids(script, configs))
    for key, value in expected.items():
        if entry[key] != value:
            raise CheckFailed(f"the results JSON says {key} {entry[key]!r}, not {value!r}")
    gap = rescore_gap(setting, out / SCRIPTS[script], [entry], folder, setting.device)
    return {"figure": f"{entry['final_test_accuracy']:.2f}% after 1 epoch "
                      f"({entry['precision']}{', compiled' if entry['compiled'] else ''}), "
                      f"{entry['train_seconds']:.1f} s; weights rescore within {gap:.2f} points"}


def data_parallel_note(results, setting):
    """The Task 3 script must spread over every visible GPU (nn.DataParallel) when several."""
    devices, backend = results["devices"], results["backend"]
    if setting.gpus > 1:
        if backend != "DataParallel" or len(devices) != setting.gpus:
            raise CheckFailed(f"expected DataParallel over {setting.gpus} GPUs, the results "
                              f"JSON says backend {backend!r}, devices {devices}")
        return f"DataParallel over {len(devices)} GPUs"
    if backend != "single process":
        raise CheckFailed(f"one device, yet the results JSON says backend {backend!r}")
    if setting.gpus == 1:
        return "one GPU: DataParallel is not used (nothing to spread over); trained on it"
    return "CPU: DataParallel is not used"


def check_precision(setting, amp, with_script, folder):
    """What the layers really computed in, against what the results JSON records."""
    plan, notes, recorded = setting.plan, [], None
    if with_script:
        script, out = "Original_version_model_multiGPU.py", folder / "run"
        run_ok(script_command(script, setting, out, "--configs", PROBE_CONFIG, "--epochs", 1,
                              "--amp", amp, *subset_args(plan["precision_subset"])),
               folder / "run.log", plan["timeout_run"])
        results = read_results(out, script)
        (entry,) = finished_entries(results, selected_ids(script, PROBE_CONFIG))
        recorded = entry["precision"]
        notes.append(data_parallel_note(results, setting))
    probe = layer_probe(setting, "precision", amp, folder)
    label, expected = probe["precision"], expected_precision(setting, amp)
    problems = precision_mismatches(label, probe["layers"], expected_devices(setting))
    if label != expected:  # the runtime's choice itself, not only its record, is checked
        problems.insert(0, f"--amp {amp} gave {label!r}; here it must give {expected!r}")
    if recorded is not None and recorded != label:
        problems.insert(0, f"the results JSON records {recorded!r}, runtime.precision() "
                           f"says {label!r}")
    if problems:
        raise CheckFailed("; ".join(problems), f"TF32 allowed: {probe['tf32_allowed']}\n"
                                               + layer_table(probe["layers"]))
    seen = sorted({layer["computed_in"] for layer in probe["layers"]})
    where = sorted({layer["device"] for layer in probe["layers"]})
    return {"figure": f"recorded {recorded or label!r}; {len(probe['layers'])} Conv2d/Linear "
                      f"calls computed in {', '.join(seen)} on {', '.join(where)} "
                      f"({probe['wrapper']})", "notes": notes,
            "layers": probe["layers"]}


def expected_precision(setting, amp):
    """What ``--amp`` must give the Task 3 LeNet here, worked out apart from runtime.py: on
    the CPU fp32 unless on (LeNet's auto stays fp32); on GPUs fp32 for off, else bf16 where
    every visible GPU has it in hardware (compute capability 8.0 up), fp16 with loss scaling
    where one lacks it or where the fp16 path is forced."""
    if amp == "off" or (setting.device == "cpu" and amp == "auto"):
        return "fp32"
    if setting.device == "cpu":
        return "bf16 autocast"
    native = all(torch.cuda.get_device_capability(index)[0] >= 8
                 for index in range(torch.cuda.device_count()))
    return ("bf16 autocast" if native and os.environ.get(rt.FORCE_FP16) != "1"
            else "fp16 autocast with loss scaling")


def layer_probe(setting, kind, amp, folder):
    """PROBES[kind]'s answer: in a fresh process on a GPU (CUDA's state is set once a
    process), in this one with --quick (the CPU: each fresh process costs ~4 s)."""
    if setting.quick:
        return PROBES[kind](setting.data_dir, setting.device, amp)
    answer = folder / f"{kind}.json"
    run_ok([sys.executable, Path(__file__).resolve(), "--probe", kind, "--amp", amp,
            "--data-dir", setting.data_dir, "--device", setting.device, "--probe-out", answer],
           folder / f"{kind}.log", setting.plan["timeout_run"])
    return json.loads(answer.read_text())


def check_replicas(setting, folder):
    """DataParallel's replicas compute in the precision the run records: each runs in a
    thread of its own, where autocast's dtype is not the caller's (runtime.Autocast carries
    it there). Two replicas on one device, so that a machine with one GPU checks it too."""
    probe = layer_probe(setting, "replicas", "on", folder)
    label, layers = probe["precision"], probe["layers"]
    problems = precision_mismatches(label, layers, expected_devices(setting)[:1])
    threads = sorted({layer["thread"] for layer in layers} - {"main"})
    if len(threads) != 2:
        problems.append(f"the layers ran in {len(threads)} replica thread(s), not 2")
    if problems:
        raise CheckFailed("; ".join(problems), layer_table(layers))
    seen = sorted({layer["computed_in"] for layer in layers})
    return {"figure": f"recorded {label!r}; {len(layers)} Conv2d/Linear calls in 2 replica "
                      f"threads computed in {', '.join(seen)} ({probe['how']})",
            "layers": layers}


def expected_devices(setting):
    """Where the Task 3 model must run: every visible GPU under DataParallel."""
    if setting.device == "cpu":
        return ["cpu"]
    return [f"cuda:{index}" for index in range(max(setting.gpus, 1))]


def precision_mismatches(label, layers, devices):
    """What is wrong (empty when nothing is) with layers that computed as ``layers`` says,
    for a run recorded as ``label`` that should have used every device in ``devices``."""
    allowed = ALLOWED_COMPUTE.get(label)
    if allowed is None:
        return [f"unknown precision {label!r} (known: {', '.join(ALLOWED_COMPUTE)})"]
    if not layers:
        return ["no Conv2d or Linear layer ran"]
    problems = []
    wrong = sorted({(layer["computed_in"], layer["device"]) for layer in layers
                    if layer["computed_in"] not in allowed})
    if wrong:
        problems.append(f"recorded {label!r}, but layers computed in "
                        + ", ".join(f"{kind} on {device}" for kind, device in wrong))
    missing = [device for device in devices if device not in {l["device"] for l in layers}]
    if missing:
        problems.append(f"no Conv2d or Linear ran on {', '.join(missing)}")
    return problems


def layer_table(layers):
    return "\n".join(f"{layer['layer']:>8s} on {layer['device']}: output {layer['dtype']}, "
                     f"computed in {layer['computed_in']} (error {layer['relative_error']:.1e} "
                     f"against float64)" for layer in layers)


def check_torchrun(setting, folder):
    """DDP under torchrun, one process per GPU (NCCL) or 2 CPU processes (gloo)."""
    plan, script, out = setting.plan, "Resnet_model.py", folder / "run"
    processes = torchrun_processes(setting)
    command = script_command(script, setting, out, "--configs", "best", "--epochs", 1,
                             *subset_args(plan["torchrun_subset"]),
                             launcher=["-m", "torch.distributed.run", "--standalone",
                                       f"--nproc-per-node={processes}"])
    run_ok(command, folder / "torchrun.log", plan["timeout_run"], env={"OMP_NUM_THREADS": "1"})
    results = read_results(out, script)
    (entry,) = finished_entries(results, selected_ids(script, "best"))
    backend = "nccl" if setting.device == "cuda" else "gloo"
    if (results["world_size"], results["backend"]) != (processes, backend):
        raise CheckFailed(f"expected world_size {processes}, backend {backend}; the results "
                          f"JSON says {results['world_size']}, {results['backend']}")
    if not (out / entry["weights"]).is_file():
        raise CheckFailed(f"{entry['weights']} missing")
    return {"figure": f"world_size {processes}, backend {backend}: "
                      f"{entry['final_test_accuracy']:.2f}% after 1 epoch on "
                      f"{results['data']['train_images']:,} images, "
                      f"{entry['train_seconds']:.1f} s"}


def torchrun_processes(setting):
    return setting.gpus if setting.device == "cuda" else setting.plan["cpu_processes"]


def check_resume(setting, folder):
    """SIGTERM mid-epoch 2, exit 143 and a mid-epoch checkpoint; the same command finishes
    the run with the weights of a run never interrupted."""
    plan, script = setting.plan, "Original_version_model.py"
    args = ["--epochs", plan["resume_epochs"], *subset_args(plan["resume_subset"])]
    reference, resumed = folder / "uninterrupted", folder / "interrupted"
    alike = {rt.DETERMINISTIC: "1"}  # like with like: the same cuDNN kernels in every run
    run_ok(script_command(script, setting, reference, *args), folder / "1-uninterrupted.log",
           plan["timeout_run"], env=alike)
    command = script_command(script, setting, resumed, *args)
    progress = interrupt_mid_epoch(command, resumed, folder / "2-interrupted.log",
                                   plan["timeout_run"], env=alike)
    run_ok(command, folder / "3-resumed.log", plan["timeout_run"], env=alike)
    if "resuming from its checkpoint after epoch 1" not in tail(folder / "3-resumed.log", 10**6):
        raise CheckFailed("the rerun did not say it resumed from the checkpoint",
                          tail(folder / "3-resumed.log"))
    figure = f"SIGTERM at epoch {progress['epoch'] + 1}, step {progress['step']}; "
    if setting.device == "cpu":  # exact; the GPU's measure as well, so that it runs in --quick
        figure += same_run_exactly(reference, resumed) + "; "
    else:  # with deterministic cuDNN, exact is likely: said, and judged within a tolerance
        figure += exactly_or_not(reference, resumed) + "; "
    return {"figure": figure + same_run_within_tolerance(reference, resumed),
            "notes": [f"GPU tolerance: test accuracy within {RESUME_ACCURACY_POINTS} point, "
                      f"weights within {RESUME_WEIGHTS_SHARE:.0%} of the distance training "
                      f"moved them (cudnn.benchmark, atomics and bf16 make GPU runs differ "
                      f"in the last bits); on the CPU bit-identical"]}


def interrupt_mid_epoch(command, out, log, timeout, env=None):
    """Start ``command``; once epoch 1's checkpoint exists and epoch 2 has printed its loss at
    mini-batch 1000 (well inside the epoch, whatever the speed), send SIGTERM. Returns the
    progress saved in the checkpoint."""
    process = start_logged(command, log, env)
    deadline = time.monotonic() + timeout
    try:
        while not (any(out.glob("runs/*/checkpoint.ckpt"))
                   and RESUME_SIGNAL_LINE in log.read_text()):
            if process.poll() is not None:
                raise CheckFailed(f"the run ended (status {process.returncode}) before epoch 2 "
                                  f"printed {RESUME_SIGNAL_LINE!r}", tail(log))
            if time.monotonic() > deadline:
                raise CheckFailed(f"no {RESUME_SIGNAL_LINE!r} within {timeout} s", tail(log))
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
    except BaseException:
        stop_group(process)
        raise
    status = wait_logged(process, log, timeout)
    if status != 143:
        raise CheckFailed(f"SIGTERM: exit status {status}, expected 143", tail(log))
    (checkpoint,) = out.glob("runs/*/checkpoint.ckpt")
    progress = torch.load(checkpoint, map_location="cpu", weights_only=True)["progress"]
    if progress["step"] <= 0:
        raise CheckFailed(f"the checkpoint is at step {progress['step']} of epoch "
                          f"{progress['epoch'] + 1}: SIGTERM did not land mid-epoch")
    return progress


def finished_run(out):
    """(results entry, weights) of a finished baseline run."""
    (entry,) = read_results(out, "Original_version_model.py")["configs"]
    if entry["status"] != "finished":
        raise CheckFailed(f"{out}: config_1 is {entry['status']}")
    return entry, torch.load(out / entry["weights"], map_location="cpu", weights_only=True)


def same_run_exactly(reference_out, resumed_out):
    (reference, reference_weights), (resumed, weights) = map(finished_run,
                                                             (reference_out, resumed_out))
    for key in ("history", "batch_losses"):
        ours, theirs = (without_seconds(entry.get(key, [])) for entry in (resumed, reference))
        if ours != theirs:
            raise CheckFailed(f"the resumed run's {key} differs from the uninterrupted run's")
    differing = [key for key in reference_weights
                 if not torch.equal(weights[key], reference_weights[key])]
    if differing:
        raise CheckFailed(f"weights differ from the uninterrupted run's: {', '.join(differing)}")
    return "weights and history bit-identical to the uninterrupted run"


def exactly_or_not(reference_out, resumed_out):
    """same_run_exactly's verdict as words, not as a failure."""
    try:
        return same_run_exactly(reference_out, resumed_out)
    except CheckFailed as difference:
        return f"not bit-identical ({difference.message})"


def without_seconds(records):
    return [{key: value for key, value in record.items() if key != "seconds"}
            for record in records]


def same_run_within_tolerance(reference_out, resumed_out):
    (reference, reference_weights), (resumed, weights) = map(finished_run,
                                                             (reference_out, resumed_out))
    train.seed_everything(reference["seed"])  # the kit's initial weights: seed, then build
    initial = Original_version_model.build_model(reference["config"]).state_dict()
    distance, moved = (torch.sqrt(sum(((a[key].double() - b[key].double()) ** 2).sum()
                                      for key in reference_weights))
                       for a, b in ((weights, reference_weights), (reference_weights, initial)))
    share = (distance / moved).item()
    gap = abs(resumed["final_test_accuracy"] - reference["final_test_accuracy"])
    figure = (f"test accuracy {resumed['final_test_accuracy']:.2f}% vs "
              f"{reference['final_test_accuracy']:.2f}% uninterrupted; weights differ by "
              f"{share:.2%} of the distance training moved them")
    if gap > RESUME_ACCURACY_POINTS or share > RESUME_WEIGHTS_SHARE:
        raise CheckFailed(f"beyond the GPU tolerance: {figure}")
    return figure


def check_speed(setting, amp, folder):
    """ResNet-18, batch 128 (the config named best; PLAN["speed_run"]), on
    PLAN["speed_subset"] images: images/s of the last epoch."""
    plan, out = setting.plan, folder / "run"
    (script, name), epochs = plan["speed_run"], plan["speed_epochs"]
    run_ok(script_command(script, setting, out, "--configs", name, "--epochs", epochs,
                          "--amp", amp, *subset_args(plan["speed_subset"])),
           folder / "run.log", plan["timeout_run"])
    results = read_results(out, script)
    (entry,) = finished_entries(results, selected_ids(script, name))
    images = results["data"]["train_images"]
    speeds = [images / record["seconds"] for record in entry["history"]]
    figure = (f"{speeds[-1]:,.0f} img/s ({entry['precision']}; epoch {epochs}: "
              f"{entry['history'][-1]['seconds']:.1f} s for {images:,} images")
    if epochs > 1:
        warm_up = "warm-up and cudnn autotuning" if setting.device == "cuda" else "warm-up"
        figure += f"; epoch 1, with {warm_up}: {speeds[0]:,.0f} img/s"
    return {"figure": figure + ")", "images_per_s": speeds[-1],
            "reference": f"report: ~{REPORT_IMAGES_PER_S:,.0f} img/s on one A100 (25 epochs in "
                         f"{REPORT_BEST[1]} s; precision not stated)"}


def check_long_run(setting, configs, subset, seeds, folder):
    """A whole ResNet-18 config as the README quotes it: accuracy and training time, for each
    of ``seeds`` seeds (0, 1, ...)."""
    plan, out = setting.plan, folder / "run"
    script = plan["recipe_script"] if configs == "recipe" else "Resnet_model.py"
    epochs = plan["long_run_epochs"]  # None: the config's own
    run_ok(script_command(script, setting, out, "--configs", configs, *subset_args(subset),
                          *(["--epochs", epochs] if epochs else []),
                          *(["--seeds", seeds] if configs == "recipe" else [])),
           folder / "run.log", plan["timeout_long_run"])
    results = read_results(out, script)
    entries = finished_entries(results, selected_ids(script, configs) * seeds)
    if configs == "recipe":
        return judged(recipe_verdict(entries, results["data"]["train_images"]), setting)
    (entry,) = entries
    accuracy, seconds = entry["final_test_accuracy"], entry["train_seconds"]
    trained = len(entry["history"])
    figure = (f"{accuracy:.2f}% test accuracy, {seconds:.1f} s of training "
              f"({trained} epoch{'s' * (trained != 1)} of {results['data']['train_images']:,} "
              f"images, {entry['precision']})")
    if accuracy < BEST_FLOOR and not setting.quick:  # the report's 89.56%, less the JPEG point
        raise CheckFailed(f"{figure}: below the floor of {BEST_FLOOR}%")
    return {"figure": figure, "accuracy": accuracy, "train_seconds": seconds,
            "reference": f"report: {REPORT_BEST[0]}%, {REPORT_BEST[1]} s, one A100 "
                         f"(original CIFAR-10; the JPEG copy costs about a point)"}


def judged(verdict, setting):
    """The recipe's verdict as the check's result: a miss of its aim fails the check on a
    GPU. With --quick (the CPU, a few images) the aim cannot be met and is not judged."""
    if not verdict["aim_met"] and not setting.quick:
        raise CheckFailed(verdict["figure"])
    return verdict


def recipe_verdict(entries, train_images):
    """The recipe's figures against its aim: the mean test accuracy over the seeds (with TTA
    where the config uses it) against 94%, each seed's training time against 40 s, and the
    epochs against 25; every seed's figures besides."""
    runs = [{"seed": entry["seed"], "accuracy": entry["final_test_accuracy"],
             "accuracy_without_tta": entry["history"][-1].get("test_accuracy_without_tta"),
             "train_seconds": entry["train_seconds"], "epochs": len(entry["history"])}
            for entry in sorted(entries, key=lambda entry: entry["seed"])]
    accuracy = sum(run["accuracy"] for run in runs) / len(runs)
    seconds = sum(run["train_seconds"] for run in runs) / len(runs)
    epochs = max(run["epochs"] for run in runs)
    misses = []
    if accuracy < RECIPE_AIM[0]:
        misses.append(f"mean accuracy below {RECIPE_AIM[0]:g}%")
    slow = [f"seed {run['seed']}: {run['train_seconds']:.1f} s" for run in runs
            if run["train_seconds"] > RECIPE_AIM[1]]
    if slow:
        misses.append(f"over {RECIPE_AIM[1]:.0f} s ({', '.join(slow)})")
    if epochs > RECIPE_MAX_EPOCHS:
        misses.append(f"{epochs} epochs, over {RECIPE_MAX_EPOCHS}")
    without_tta = [run["accuracy_without_tta"] for run in runs]
    figure = (f"mean of {len(runs)} seed{'s' * (len(runs) != 1)}: {accuracy:.2f}% test "
              f"accuracy" + (f" ({sum(without_tta) / len(runs):.2f}% without TTA)"
                             if None not in without_tta else "")
              + f", {seconds:.1f} s of training ({epochs} epoch{'s' * (epochs != 1)} of "
              f"{train_images:,} images, {entries[0]['precision']}): aim "
              + (f"NOT met: {'; '.join(misses)}" if misses else "met")
              + "; " + ", ".join(f"seed {run['seed']}: {run['accuracy']:.2f}% in "
                                 f"{run['train_seconds']:.1f} s" for run in runs))
    return {"figure": figure, "accuracy": accuracy, "train_seconds": seconds, "seeds": runs,
            "aim_met": not misses,
            "reference": f"aim: a mean of >= {RECIPE_AIM[0]:g}% over 3 seeds, each in <= "
                         f"{RECIPE_AIM[1]:.0f} s and <= {RECIPE_MAX_EPOCHS} epochs, one "
                         f"H100/H200"}


def check_pytest(setting, marker, folder):
    """The test suite (or its GPU tests), as `python -m pytest -q [-m MARKER]`."""
    log = folder / "pytest.log"
    # -o addopts=-ra: one process, as the GPU is one, and pytest-xdist (pyproject.toml's
    # -n auto) need not be installed beside the machine's own torch
    command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=-ra",
               *(["-m", marker] if marker else [])]
    status = wait_logged(start_logged(command, log), log, setting.plan["timeout_pytest"])
    counts = pytest_counts(tail(log))
    summary = ", ".join(f"{number} {kind}" for kind, number in counts.items()) or "no summary"
    if status == 5:
        raise CheckFailed(f"no test ran ({summary})", tail(log))
    if status != 0:
        raise CheckFailed(f"pytest exit status {status}: {summary}", tail(log))
    return {"figure": summary, "counts": counts}


def pytest_counts(output):
    """{"passed": 3, "failed": 1, ...} from pytest's closing summary line."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|"
                                                               r"skipped|deselected)", line)]
    if not lines:
        return {}
    found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)",
                       lines[-1])
    return {kind.rstrip("s") if kind.startswith("error") else kind: int(number)
            for number, kind in found}


def all_checks(setting, with_pytest):
    """[(id, what it runs, check(folder))] in the order they run."""
    plan, device = setting.plan, setting.device
    found = []
    for script in SCRIPTS:
        configs = plan["script_configs"].get(script)
        what = (f"`{script} --subset {plan['script_subset']} --epochs 1 --device {device}"
                f"{' --configs ' + configs if configs else ''}`; weights rescored")
        found.append((f"script-{SHORT_NAMES[script]}", what,
                      partial(check_script, setting, script)))
    found.append(("weights-on-cpu", f"`L2_regularization.py --configs 1 --epochs 1 --subset "
                                    f"{plan['script_subset']} --device {device}`; its weights "
                                    f"loaded and scored with no GPU visible",
                  partial(check_weights_on_cpu, setting)))
    for number, amp in enumerate(plan["precision_amps"]):
        script_run = (f"`Original_version_model_multiGPU.py --configs {PROBE_CONFIG} --amp {amp}`,"
                      f" then " if number == 0 else "")
        what = (f"{script_run}one training step of its LeNet, placed with "
                f"place_model(data_parallel=True), --amp {amp}; hooks on every Conv2d/Linear")
        found.append((f"precision-{amp}", what,
                      partial(check_precision, setting, amp, number == 0)))
    found.append(("dp-replicas", "one training step of the Task 3 LeNet through "
                                 "DataParallel's replica threads, two replicas on one "
                                 "device, --amp on; hooks on every Conv2d/Linear",
                  partial(check_replicas, setting)))
    found.append(("fp16-scaler", f"`Original_version_model_multiGPU.py --configs "
                                 f"{PROBE_CONFIG} --amp on --epochs 1` with fp16 and loss "
                                 f"scaling forced ({rt.FORCE_FP16}=1); weights rescored",
                  partial(check_fp16_scaler, setting)))
    found.append(("compile", "`L2_regularization.py --configs 1 --epochs 1 --compile`; "
                             "weights rescored", partial(check_compile, setting)))
    found.append(("torchrun", f"`torchrun --nproc-per-node={torchrun_processes(setting)} "
                              f"Resnet_model.py "
                              f"--configs best --epochs 1 --subset {plan['torchrun_subset']}`",
                  partial(check_torchrun, setting)))
    found.append(("resume", f"`Original_version_model.py --subset {plan['resume_subset']} "
                            f"--epochs {plan['resume_epochs']}`: uninterrupted; SIGTERM mid-epoch "
                            f"2; the same command again", partial(check_resume, setting)))
    for amp, name in (("on", "bf16"), ("off", "fp32")):
        found.append((f"speed-{name}", f"`{plan['speed_run'][0]} --configs {plan['speed_run'][1]} "
                                       f"--amp {amp} --epochs {plan['speed_epochs']}`"
                                       f"{sized(plan['speed_subset'])}",
                      partial(check_speed, setting, amp)))
    epochs = plan["long_run_epochs"]
    for configs, subset, seeds in (("best", plan["best_subset"], 1),
                                   ("recipe", plan["recipe_subset"], plan["recipe_seeds"])):
        found.append((f"resnet-{configs}",
                      f"`{plan['recipe_script'] if configs == 'recipe' else 'Resnet_model.py'}"
                      f" --configs {configs}"
                      f"{' --epochs ' + str(epochs) if epochs else ''}"
                      f"{' --seeds ' + str(seeds) if configs == 'recipe' else ''}`"
                      f"{sized(subset)}",
                      partial(check_long_run, setting, configs, subset, seeds)))
    if with_pytest:
        found.append(("pytest-gpu", "`python -m pytest -m gpu -q`",
                      partial(check_pytest, setting, "gpu")))
        found.append(("pytest-all", "`python -m pytest -q`", partial(check_pytest, setting, None)))
    return found


def sized(subset):
    return f" on {subset} images" if subset else ", full training set"


# ---- the children: work on the accelerator happens in processes of its own ----

def probe_precision(data_dir, device, amp):
    """One training step of the Task 3 script's model, placed as the script places it, with
    every Conv2d and Linear call recorded: device, output dtype, and what it computed in."""
    runtime = rt.init_runtime(device, data_parallel=True, amp=amp)
    model, layers = one_step_with_hooks(data_dir, runtime)
    return {"precision": rt.precision(runtime), "wrapper": type(model).__name__,
            "tf32_allowed": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                             "cudnn": torch.backends.cudnn.allow_tf32},
            "layers": layers}


def one_step_with_hooks(data_dir, runtime, rewrap=lambda model: None):
    """The Task 3 config PROBE_CONFIG's model, placed by place_model (then changed by
    ``rewrap``), trained one step by train.fit on one batch; the placed model and the
    record of every Conv2d and Linear call."""
    script = Original_version_model_multiGPU
    ((_, chosen),) = cli.select_configs(config.check_configs(script.CONFIGS), PROBE_CONFIG)
    dataset = data.load_cifar10(data_dir, chosen["batch_size"], 0)
    model, layers = script.build_model(chosen), []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):  # replicas share these hooks
            module.register_forward_hook(partial(record_layer, layers, name))
    model = rt.place_model(model, runtime)
    rewrap(model)
    images, labels = (tensor.to(runtime.device) for tensor in
                      (dataset.train_images, dataset.train_labels))
    scale, shift = data.normalizer(*script.NORMALIZATION, device=runtime.device)
    on_device = data.OnDevice(images, labels, images, labels, scale, shift)
    train.fit(model, dict(chosen, num_epochs=1, batch_size=len(labels)), on_device, runtime)
    return model, layers


def probe_replicas(data_dir, device, amp):
    """One training step of the Task 3 script's model through DataParallel's replica
    threads (two_replicas), placed as the script places it over several GPUs, with every
    Conv2d and Linear call recorded."""
    runtime = rt.init_runtime(device, data_parallel=True, amp=amp)
    runtime.data_parallel = True  # one device: place_model wraps as over several GPUs
    if runtime.device.type == "cpu":
        # A new thread's autocast dtype on the CPU is bf16, the kit's own CPU choice: in
        # fp16, a replica that lost the run's dtype shows (on a GPU, the default is fp16)
        runtime.amp_dtype = torch.float16
    model, layers = one_step_with_hooks(data_dir, runtime, two_replicas)
    return {"precision": rt.precision(runtime), "how": model.replicas_by, "layers": layers}


def two_replicas(model):
    """Make the DataParallel ``model`` run two replicas on its one device, each in a thread
    of its own as over two GPUs. On a GPU: DataParallel's own forward (scatter,
    parallel_apply's threads, gather), with the module itself as both replicas (replicate()
    copies through a broadcast meant for distinct GPUs). On the CPU, where DataParallel
    runs no threads: what parallel_apply does, each half of the batch in a new thread with
    autocast re-entered there by its on/off switch only."""
    if model.device_ids:
        model.device_ids = model.device_ids[:1] * 2
        model.replicate = lambda module, device_ids: [module] * len(device_ids)
        model.replicas_by = "DataParallel's forward, two replicas on one GPU"
        return
    module, outputs = model.module, {}

    def replica(number, images, enabled):
        with torch.autocast("cpu", enabled=enabled):
            outputs[number] = module(images)

    def forward(images):
        threads = [threading.Thread(target=replica, args=(number, half,
                                                          torch.is_autocast_enabled("cpu")))
                   for number, half in enumerate(images.chunk(2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with torch.autocast("cpu", enabled=False):  # gathered as they came, as on a GPU
            return torch.cat([outputs.pop(0), outputs.pop(1)])

    model.forward = forward
    model.replicas_by = "on the CPU: parallel_apply's threads, as DataParallel runs none here"


def record_layer(layers, name, module, inputs, output):
    """Forward hook: what one Conv2d or Linear call computed in (runs in DataParallel's
    replica threads too)."""
    with torch.no_grad(), torch.autocast(output.device.type, enabled=False):
        weight = module.weight.double()
        bias = module.bias.double() if module.bias is not None else None
        if isinstance(module, nn.Conv2d):
            reference = module._conv_forward(inputs[0].double(), weight, bias)
        else:
            reference = F.linear(inputs[0].double(), weight, bias)
        error = ((output.double() - reference).abs().max()
                 / reference.abs().max().clamp(min=1e-30)).item()
    kind = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(output.dtype)
    if output.dtype == torch.float32:
        kind = "tf32" if error > TF32_THRESHOLD else "fp32"
    thread = threading.current_thread()
    layers.append({"layer": name, "device": str(output.device), "relative_error": error,
                   "thread": "main" if thread is threading.main_thread() else thread.name,
                   "dtype": str(output.dtype).replace("torch.", ""),
                   "computed_in": kind or str(output.dtype)})


def rescore(results_path, data_dir, device, subset):
    """{weights file: test accuracy %} of every finished config of a results JSON, reloaded
    into its script's build_model(config) and scored on the run's own test images, on
    ``device``, in the precision the JSON records."""
    results_path = Path(results_path)
    results = json.loads(results_path.read_text())
    script = importlib.import_module(Path(results["script"]).stem)
    dataset = data.load_cifar10(data_dir, subset, results["seed"])
    runtime = rt.init_runtime(device, amp="off")  # the run's cudnn and TF32 settings
    scale, shift = data.normalizer(*script.NORMALIZATION, device=runtime.device)
    test_images = dataset.test_images.to(runtime.device)
    scores = {}
    for entry in results["configs"]:
        if entry["status"] != "finished":
            continue
        model = script.build_model(entry["config"])
        # the README's line, no map_location: weights saved as CUDA tensors fail here
        # when no GPU is visible, as they would for a user
        model.load_state_dict(torch.load(results_path.parent / entry["weights"],
                                         weights_only=True))
        runtime.amp_dtype = AMP_DTYPES[entry["precision"]]
        predictions = train.predict(rt.place_model(model, runtime), test_images, scale, shift,
                                    runtime, entry["config"].get("tta", False))
        scores[entry["weights"]] = train.accuracy(predictions, dataset.test_labels)
    return scores


# ---- recording ----

def run_one(check_id, what, check, folder):
    """One check's record; a check that fails, or breaks, is recorded and the next one runs."""
    started = time.perf_counter()
    record = {"id": check_id, "what": what, "folder": str(folder)}
    try:
        record.update(check(folder), result="pass")
    except CheckFailed as failure:
        record.update(result="fail", error=failure.message, error_tail=failure.tail)
    except Exception as error:  # a surprise in the check itself
        record.update(result="fail", error=f"{type(error).__name__}: {error}",
                      error_tail=traceback.format_exc()[-TAIL_CHARS:])
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def markdown(report):
    passed = sum(check["result"] == "pass" for check in report["checks"])
    lines = [f"# GPU check: {report['machine']['summary']}", "",
             f"`{report['command']}`, {report['started']}, "
             f"{report['total_seconds'] / 60:.1f} min in all", "",
             f"**{passed} of {len(report['checks'])} checks passed.**", ""]
    if report["quick"]:
        lines += [f"> {report['note']}", ""]
    lines += ["| Check | What ran | Result | Figure | Report / aim | Time |",
              "|---|---|---|---|---|---|"]
    for check in report["checks"]:
        figure = check.get("figure", "") if check["result"] == "pass" else check["error"]
        figure += "".join(f"; {note}" for note in check.get("notes", []))
        result = "pass" if check["result"] == "pass" else "**FAIL**"
        lines.append(f"| {check['id']} | {cell(check['what'])} | {result} | {cell(figure)} | "
                     f"{cell(check.get('reference', '—'))} | {check['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def cell(text, limit=400):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + " …"


def failure_details(report):
    parts = []
    for check in report["checks"]:
        if check["result"] != "pass":
            parts += [f"## {check['id']}: {check['error']}", "", "```",
                      check["error_tail"].strip(), "```", f"Logs: {check['folder']}", ""]
    return "\n".join(parts)


def save(report, out):
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    details = failure_details(report)
    (out / "gpu_check.md").write_text(markdown(report) + ("\n" + details if details else ""))


def copy_record(out, record):
    """The JSON, the table and the logs of ``out`` into ``record``, in the same folders, each
    file whole (copied beside its target, then renamed): a kill never leaves half of one."""
    for pattern in ("gpu_check.json", "gpu_check.md", "*.log"):
        for path in out.rglob(pattern):
            target = record / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target.with_name(f".{target.name}.tmp"))
            os.replace(target.with_name(f".{target.name}.tmp"), target)


def set_aside_earlier(out):
    """Start from empty run folders: a script finds its earlier results in its --out and
    skips the configs they hold. An earlier gpu_check's files move into earlier-<time>/."""
    ours = [out / name for name in ("checks", "gpu_check.json", "gpu_check.md")
            if (out / name).exists()]
    if not ours:
        return None
    target = Path(tempfile.mkdtemp(prefix=f"earlier-{datetime.now():%Y%m%d-%H%M%S}-", dir=out))
    for path in ours:
        os.replace(path, target / path.name)
    return target


def machine(setting):
    gpus = ([torch.cuda.get_device_name(index) for index in range(setting.gpus)]
            if setting.gpus else [])
    where = ", ".join(gpus) if gpus else "CPU (--quick)" if setting.quick else "CPU"
    return {"summary": f"{where}, {os.cpu_count()} CPU cores; torch {torch.__version__}",
            "gpus": gpus,
            "cpu_cores": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform()}


# ---- command line ----

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="a CIFAR-10 copy, as the scripts' --data-dir (e.g. the image folders)")
    parser.add_argument("--out", type=Path, default=Path("modelset/gpu_check"),
                        help="where the results go (default: modelset/gpu_check)")
    parser.add_argument("--quick", action="store_true",
                        help="every check on the CPU, tiny (for the tests): figures mean nothing")
    parser.add_argument("--pytest", action="store_true",
                        help="also run `pytest -m gpu` and the whole test suite")
    parser.add_argument("--only", metavar="ID,ID", help="run only these checks (ids as listed "
                                                        "in the table)")
    parser.add_argument("--skip", metavar="ID,ID", help="run all but these checks")
    parser.add_argument("--record", type=Path, metavar="DIR",
                        help="after every check, copy the record (gpu_check.json, gpu_check.md, "
                             "the logs; no weights) into DIR: a command cut off keeps it")
    for flag in ("--probe", "--results", "--device", "--amp", "--subset", "--probe-out"):
        parser.add_argument(flag, help=argparse.SUPPRESS)  # the children's own flags
    return parser.parse_args(argv)


def probe_main(args):
    """A child process's work: its answer goes to --probe-out as JSON."""
    if args.probe in PROBES:
        answer = PROBES[args.probe](args.data_dir, args.device, args.amp)
    else:
        answer = rescore(args.results, args.data_dir, args.device,
                         int(args.subset) if args.subset else None)
    Path(args.probe_out).write_text(json.dumps(answer, indent=2) + "\n")
    return 0


PROBES = {"precision": probe_precision, "replicas": probe_replicas}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.probe:
        return probe_main(args)
    if not args.data_dir.is_dir():
        print(f"error: --data-dir {args.data_dir}: no such folder", file=sys.stderr)
        return 2
    if not args.quick and not torch.cuda.is_available():
        print(f"error: no CUDA GPU is visible to PyTorch here (torch {torch.__version__}, CUDA "
              f"build: {torch.version.cuda}). Run on a GPU machine, or add --quick to run the "
              f"checks on the CPU.", file=sys.stderr)
        return 2
    setting = Setting(args.data_dir.resolve(), args.out.resolve(),
                      {key: value[args.quick] for key, value in PLAN.items()},
                      0 if args.quick else torch.cuda.device_count(), args.quick,
                      args.record)
    checks = all_checks(setting, args.pytest)
    known = [check_id for check_id, _, _ in checks]
    for flag, named, keep in (("--only", args.only, True), ("--skip", args.skip, False)):
        unknown = [name for name in (named or "").split(",") if name and name not in known]
        if unknown:
            print(f"error: {flag}: no check {', '.join(unknown)}; the checks: "
                  f"{', '.join(known)}", file=sys.stderr)
            return 2
        if named:
            checks = [check for check in checks if (check[0] in named.split(",")) == keep]
    try:
        with signals.sigterm_as_interrupt():
            return run_all(setting, checks, argv)
    except KeyboardInterrupt as stop:  # the check's own runs are stopped (wait_logged)
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"\nStopped by {'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}; the record "
              f"of the checks done: {setting.record or setting.out}/gpu_check.json",
              file=sys.stderr)
        return signals.EXIT[signum]


def run_all(setting, checks, argv):
    setting.out.mkdir(parents=True, exist_ok=True)
    earlier = set_aside_earlier(setting.out)
    if earlier:
        print(f"An earlier gpu_check's results are kept in {earlier}/")
    report = {"command": shlex.join(["python", "benchmarks/gpu_check.py", *argv]),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "quick": setting.quick, "machine": machine(setting), "plan": setting.plan,
              "checks": [], "total_seconds": 0.0}
    if setting.quick:
        report["note"] = ("Quick mode: every check ran on the CPU, on tiny subsets for 1-2 "
                          "epochs. The figures mean nothing; only pass and fail do.")
        print(report["note"])
        # One thread a process, inherited by every run: on 2 busy, shared cores, LeNet's tiny
        # steps with two OpenMP threads spin-waiting for each other took 80 s an epoch of
        # 5,000 images at batch 4, against 3 s with one.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    for number, (check_id, what, check) in enumerate(checks, 1):
        print(f"[{number}/{len(checks)}] {check_id}: {what}", flush=True)
        record = run_one(check_id, what, check, setting.out / "checks" / check_id)
        report["checks"].append(record)
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        save(report, setting.out)  # after every check: a run cut short keeps what it found
        if setting.record is not None:
            copy_record(setting.out, setting.record)
        if record["result"] == "pass":
            print(f"    pass ({record['seconds']:.0f} s): {record['figure']}", flush=True)
        else:
            print(f"    FAIL ({record['seconds']:.0f} s): {record['error']}\n"
                  f"{record['error_tail'][-1500:]}", flush=True)
    print("\n" + markdown(report))
    where = setting.record or setting.out
    print(f"Results: {where / 'gpu_check.json'}, {where / 'gpu_check.md'}")
    return 0 if all(record["result"] == "pass" for record in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
