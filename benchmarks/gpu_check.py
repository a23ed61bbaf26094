"""On a GPU machine, run this first: the GPU tests, then speed and accuracy against floors.

    python benchmarks/gpu_check.py --data-dir DIR --out gpu-check
    python benchmarks/gpu_check.py --data-dir DIR --out gpu-check --quick   # the CPU, tiny

Each step runs a command as a user would, in a process of its own with a time limit:

  pytest-gpu     python -m pytest -m gpu: every GPU path, strictly (docs/gpu-check.md)
  speed-bf16     Resnet_model.py --configs best --amp on, 2 epochs on 25,000 images: images/s
                 of epoch 2, at least the report's A100 average (4,087 images/s)
  speed-fp32     the same with --amp off: at least half that (a run fallen back to the CPU
                 trains at about 100 images/s)
  resnet-best    Resnet_model.py --configs best: the report's best run (89.56% in 305.84 s on
                 one A100): at least 88% (the JPEG copy of CIFAR-10 costs about a point)
  resnet-recipe  Resnet_model.py --configs recipe --seeds 3: its aim, a mean of at least 94%,
                 each seed in at most 40 s and 25 epochs

After every step OUT/gpu_check.json (every figure) and OUT/gpu_check.md (a table) are written
whole, and OUT/logs/<step>.log holds its output as it runs: a command cut off keeps every step
done. A later command into the same OUT adds its steps to the record (one at a time: OUT is
locked). Each step runs under guard.py, so that all of it dies with this command, even by
kill -9. The runs' own folders go to --work (default OUT/work). A step that fails does not
stop the others. --quick: the same steps on the CPU, the Task 3 LeNet instead of ResNet-18, a few
images, floors not judged (the tests run it). Exit status: 0 all passed, 1 a step failed, 2
bad input, 130/143 stopped by Ctrl-C/SIGTERM.
"""
import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from cifarkit import results, signals, store  # noqa: E402
from guard import descendants  # noqa: E402  (this file's folder)

REPORT_BEST = (89.56, 305.84)  # the report's best ResNet-18: test accuracy %, s on one A100
REPORT_IMAGES_PER_S = 25 * 50_000 / REPORT_BEST[1]  # that run's average speed: 4,087/s
BEST_FLOOR = 88.0
RECIPE_AIM = (94.0, 40.0, 25)  # mean test accuracy %, seconds per seed, epochs
# step: (on a GPU, --quick on the CPU): script, flags, time limit (s)
SPEED = ["Resnet_model.py", "--configs", "best", "--epochs", "2", "--subset", "25000"]
TINY = ["Original_version_model_multiGPU.py", "--epochs", "1", "--subset", "128"]  # --quick
STEPS = {
    "pytest-gpu": ((["-m", "pytest", "-m", "gpu", "-q", "-o", "addopts=-ra"], 540),) * 2,
    "speed-bf16": ((SPEED + ["--amp", "on"], 300),
                   (TINY + ["--configs", "speedrun", "--amp", "on"], 300)),
    "speed-fp32": ((SPEED + ["--amp", "off"], 300),
                   (TINY + ["--configs", "speedrun", "--amp", "off"], 300)),
    "resnet-best": ((["Resnet_model.py", "--configs", "best"], 600),
                    (TINY + ["--configs", "speedrun"], 300)),
    "resnet-recipe": ((["Resnet_model.py", "--configs", "recipe", "--seeds", "3"], 600),
                      (TINY + ["--configs", "recipe"], 300)),
}


def start_logged(command, log, env=None):
    """``command`` from the repository's root, its output into ``log``, in a session of its
    own, under guard.py: all of it dies with this process, even by kill -9."""
    command = [str(part) for part in command]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as file:
        file.write(f"$ {shlex.join(command)}\n")
        file.flush()
        return subprocess.Popen([sys.executable, Path(__file__).with_name("guard.py"), *command],
                                cwd=REPO, stdout=file, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                                start_new_session=True)


def stop_group(process):
    """Kill ``process``, its group and every process below it: torchrun starts each worker in
    a session of its own, which the group's kill does not reach. The group is stopped first,
    so that no new process starts while they are counted."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGSTOP)
    below = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def run(command, log, timeout):
    """The exit status of ``command``; at its time limit, Ctrl-C or SIGTERM it is killed with
    everything below it, so that no run is left holding the GPU."""
    process = start_logged(command, log)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process)
        return f"stopped at its time limit of {timeout} s"
    except BaseException:
        stop_group(process)
        raise


def pytest_counts(output):
    """{"passed": 3, "failed": 1, ...} from pytest's closing summary line."""
    count = r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)"
    lines = [line for line in output.splitlines() if re.search(count, line)]
    found = re.findall(count, lines[-1]) if lines else []
    return {kind.rstrip("s") if kind.startswith("error") else kind: int(number)
            for number, kind in found}


def judge(step, entries, train_images):
    """(figures, what misses the floor) of a script's finished ``entries``."""
    entry = entries[0]
    if step.startswith("speed"):
        speed = train_images / entry["history"][-1]["seconds"]
        floor = REPORT_IMAGES_PER_S / (1 if step == "speed-bf16" else 2)
        return ({"images_per_s": round(speed), "precision": entry["precision"],
                 "floor": round(floor)},
                [f"{speed:,.0f} images/s, under {floor:,.0f}"] if speed < floor else [])
    accuracy = sum(entry["final_test_accuracy"] for entry in entries) / len(entries)
    seconds = [round(entry["train_seconds"], 1) for entry in entries]
    epochs = max(len(entry["history"]) for entry in entries)
    figures = {"accuracy": round(accuracy, 2), "train_seconds": seconds, "epochs": epochs,
               "seeds": [entry["seed"] for entry in entries], "precision": entry["precision"]}
    if step == "resnet-best":
        return figures, [f"{accuracy:.2f}%, under {BEST_FLOOR}%"] if accuracy < BEST_FLOOR else []
    misses = [f"a mean of {accuracy:.2f}%, under {RECIPE_AIM[0]}%"] * (accuracy < RECIPE_AIM[0])
    misses += [f"seed {entry['seed']}: {entry['train_seconds']:.1f} s, over {RECIPE_AIM[1]:g} s"
               for entry in entries if entry["train_seconds"] > RECIPE_AIM[1]]
    misses += [f"{epochs} epochs, over {RECIPE_AIM[2]}"] * (epochs > RECIPE_AIM[2])
    return figures, misses


def run_step(step, setting):
    """One step's record: its command, its figures, and pass or fail (with why)."""
    plan, quick = STEPS[step], setting.quick
    arguments, timeout = plan[quick]
    out, log = setting.work / step, setting.out / "logs" / f"{step}.log"
    command = [sys.executable, *arguments] if step == "pytest-gpu" else [
        sys.executable, REPO / arguments[0], *arguments[1:], "--data-dir", setting.data_dir,
        "--out", out, "--device", "cpu" if quick else "cuda", "--restart"]
    started = time.monotonic()
    status = run(command, log, timeout)
    record = {"step": step, "command": shlex.join(map(str, command)),
              "seconds": round(time.monotonic() - started, 1)}
    output = log.read_text(errors="replace")
    if step == "pytest-gpu":
        counts = pytest_counts(output[-3000:])
        misses = [] if status == 0 and (counts.get("passed") or quick) else [
            f"exit status {status}: {counts or 'no summary'}"]
        return dict(record, figures=counts, misses=misses)
    if status != 0:
        lines = [line for line in output.splitlines() if line.strip()]
        return dict(record, misses=[f"exit status {status}: {lines[-1][:300] if lines else ''}"])
    found = next((results.load_results(path) for path in out.glob("[!.]*.json")), None)
    entries = [entry for entry in found["configs"] if entry["status"] == "finished"] \
        if isinstance(found, dict) else []
    if not entries:
        return dict(record, misses=["no finished run in its results JSON"])
    figures, misses = judge(step, entries, found["data"]["train_images"])
    return dict(record, figures=figures, misses=[] if quick else misses)


def save(report, out):
    """gpu_check.json and gpu_check.md, each written whole."""
    passed = sum(not step["misses"] for step in report["steps"])
    table = [f"# GPU check: {report['machine']}", "", "; ".join(f"`{command}`" for command in
                                                             report["commands"]),
             f"last started {report['started']}", "",
             f"**{passed} of {len(report['steps'])} steps passed.**"
             + (" Quick mode, on the CPU: the figures mean nothing." if report["quick"] else ""),
             "", "| step | result | figures | time |", "|---|---|---|---|"]
    for step in report["steps"]:
        result = "pass" if not step["misses"] else "**FAIL**: " + "; ".join(step["misses"])
        figures = ", ".join(f"{key} {value}" for key, value in step.get("figures", {}).items())
        table.append(f"| {step['step']} | {result} | {figures} | {step['seconds']:.0f} s |")
    for name, text in (("gpu_check.json", json.dumps(report, indent=2)),
                       ("gpu_check.md", "\n".join(table))):
        results.write_atomically(out / name, lambda file: file.write((text + "\n").encode()))


def parse(argv, data_ready=True):
    """The checked flags, with .steps; SystemExit(2) after one line for bad input."""
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path, help="a CIFAR-10 copy, as the "
                        "scripts read it (e.g. the image folders)")
    parser.add_argument("--out", required=True, type=Path, help="where the record goes")
    parser.add_argument("--work", type=Path, help="the runs' folders (default: OUT/work)")
    parser.add_argument("--quick", action="store_true", help="the CPU, tiny: for the tests")
    parser.add_argument("--only", metavar="STEP,STEP", help=f"of {', '.join(STEPS)}")
    setting = parser.parse_args(argv)
    named = [step.strip() for step in (setting.only or "").split(",") if step.strip()]
    setting.steps = list(dict.fromkeys(named)) if setting.only is not None else list(STEPS)
    setting.out = setting.out.expanduser().absolute()
    setting.data_dir = setting.data_dir.expanduser().absolute()
    setting.work = (setting.work or setting.out / "work").expanduser().absolute()
    unknown = [step for step in setting.steps if step not in STEPS]
    inside = [flag for flag, path in (("--out", setting.out), ("--work", setting.work))
              if path == setting.data_dir or setting.data_dir in path.parents]
    problem = (f"--only: no step {', '.join(unknown)}; the steps: {', '.join(STEPS)}" if unknown
               else "--only: name at least one step" if not setting.steps
               else f"--data-dir {setting.data_dir}: no such folder"
               if data_ready and not setting.data_dir.is_dir()
               else f"{inside[0]} is inside --data-dir: the data set is never written to"
               if inside else f"--out {setting.out}: not a folder" if setting.out.exists()
               and not setting.out.is_dir() else None)
    if problem is None and not setting.quick and not torch.cuda.is_available():
        problem = (f"no CUDA GPU is visible to PyTorch here (torch {torch.__version__}). Run "
                   f"on a GPU machine, or add --quick to run the steps on the CPU.")
    if problem:
        parser.exit(2, f"error: {problem}\n")
    return setting


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        setting = parse(argv)
    except SystemExit as refused:  # the line is printed: its status
        return refused.code
    try:
        setting.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: --out {setting.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    held = store.lock(setting.out, blocking=False)
    if held is None:
        print(f"error: --out {setting.out}: another gpu_check is writing there; wait for it, "
              f"or choose another folder.", file=sys.stderr)
        return 2
    earlier = results.read_json(setting.out / "gpu_check.json")[0]
    earlier = earlier if isinstance(earlier, dict) and isinstance(earlier.get("steps"), list) \
        else {}
    gpus = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    report = {"commands": [*earlier.get("commands", []),
                           shlex.join(["python", "benchmarks/gpu_check.py", *argv])],
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "quick": setting.quick, "steps": [step for step in earlier.get("steps", [])
                                                if step.get("step") not in setting.steps],
              "machine": f"{', '.join(gpus) or 'no GPU'}; {os.cpu_count()} CPU cores; torch "
                         f"{torch.__version__}, CUDA {torch.version.cuda}; Python "
                         f"{platform.python_version()}"}
    try:
        with signals.sigterm_as_interrupt():
            for number, step in enumerate(setting.steps, 1):
                signals.say(f"[{number}/{len(setting.steps)}] {step} ...", flush=True)
                report["steps"].append(run_step(step, setting))
                save(report, setting.out)  # after every step: a command cut off keeps it
                done = report["steps"][-1]
                verdict = "FAIL: " + "; ".join(done["misses"]) if done["misses"] else "pass"
                signals.say(f"    {verdict} {done.get('figures', '')}", flush=True)
    except KeyboardInterrupt as stop:  # the step's run is stopped (run())
        signum = getattr(stop, "signum", signal.SIGINT)
        record = f"the record: {setting.out / 'gpu_check.md'}" if report["steps"] else \
            "no step had finished"
        signals.say(f"\nStopped by {'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}; "
                    f"{record}", file=sys.stderr)
        return signals.EXIT[signum]
    finally:
        os.close(held)
    signals.say(f"Record: {setting.out / 'gpu_check.md'}, {setting.out / 'gpu_check.json'}")
    return 0 if not any(step["misses"] for step in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
