"""Where a training step's time goes: torch's profiler over the kit's own loop.

    python benchmarks/step_profile.py --data-dir ../shared/cifar10-jpeg            # LeNet, batch 4
    python benchmarks/step_profile.py --data-dir ../shared/cifar10-jpeg --batch-size 64

Runs cifarkit.train.fit (exactly what the scripts run: LeNet from
Original_version_model.py, plain SGD as in Task 1, fp32 on the CPU) for --steps steps under
torch.profiler, then sorts every operator's own CPU time into the part of the step it
belongs to: the input (cutting the batch by index, normalising it), the model (forward and
backward), the loss, the optimizer, and the running sums (loss and accuracy, the NaN look).
"Python and the rest" is the wall time no operator accounts for: the interpreter, autograd's
bookkeeping, the loop. Each operator the loop calls is counted with everything it calls;
backward's operators count as the model's, except the loss's own. The profiler itself slows every operator a little, so the shares are
what to read, not the absolute times (benchmarks/throughput.py measures speed).
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifarkit import data, train  # noqa: E402
from cifarkit.cli import positive_int  # noqa: E402
from cifarkit.errors import UserError  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402
from Original_version_model import build_model  # noqa: E402

PARTS = ("input", "model", "loss", "optimizer", "sums")


def profile_steps(images, labels, batch_size, steps, runtime, warmup=20):
    """(wall seconds, {part: own CPU seconds of its operators}) over ``steps`` kit steps."""
    torch.manual_seed(0)
    model = rt.place_model(build_model({}), runtime)
    scale, shift = data.normalizer(*data.TUTORIAL_NORMALIZATION, device=runtime.device)
    chosen = {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.0, "batch_size": batch_size,
              "num_epochs": 1}

    def on_device(first, count):  # one epoch of ``count`` images; a test "set" of one image
        part = slice(first, first + count)
        return data.OnDevice(images[part], labels[part], images[:1], labels[:1], scale, shift)

    train.fit(model, chosen, on_device(0, warmup * batch_size), runtime)  # the warm-up
    parts = dict.fromkeys(PARTS, 0.0)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        with record_function("steps"):
            train.fit(model, chosen, on_device(warmup * batch_size, steps * batch_size),
                      runtime)
        wall = time.perf_counter() - started
    for event in profiler.events():
        parent = event.cpu_parent
        if event.name == "steps" or (parent is not None and parent.name != "steps"):
            continue  # an operator called by another one: counted in its caller's time
        parts[part_of(event.name)] += event.cpu_time_total / 1e6
    return wall, parts


def part_of(name):
    """The part of the step a top-level operator (one the loop calls, with everything it
    calls in turn) belongs to."""
    if name.startswith("Optimizer.") or "sgd" in name.lower():
        return "optimizer"
    if any(key in name for key in ("cross_entropy", "log_softmax", "nll_loss", "NllLoss",
                                   "LogSoftmax")):
        return "loss"
    if name.startswith("autograd::") or any(
            key in name for key in ("conv", "pool", "relu", "linear", "flatten", "addmm",
                                    "view", "reshape", "contiguous")):
        return "model"
    if any(key in name for key in ("index_select", "addcmul", "aten::empty", "aten::to",
                                   "_to_copy", "copy_")):
        return "input"
    return "sums"  # add_, argmax, eq, sum, isfinite, item: the running totals and the look


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a CIFAR-10 copy (see README)")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--steps", type=positive_int, default=2000)
    args = parser.parse_args(argv)
    runtime = rt.init_runtime("cpu")
    try:
        dataset = data.load_cifar10(args.data_dir)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    wall, parts = profile_steps(dataset.train_images, dataset.train_labels, args.batch_size,
                                args.steps, runtime)
    print(f"LeNet, batch {args.batch_size}, {args.steps} steps of the kit's loop on the CPU "
          f"({torch.get_num_threads()} threads, torch {torch.__version__}), under the "
          f"profiler: {1e6 * wall / args.steps:.0f} us a step")
    print(f"{'part of the step':24s} {'us a step':>10s} {'share':>7s}")
    rest = wall - sum(parts.values())
    for name, seconds in list(parts.items()) + [("Python and the rest", rest)]:
        print(f"{name:24s} {1e6 * seconds / args.steps:10.0f} {100 * seconds / wall:6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
