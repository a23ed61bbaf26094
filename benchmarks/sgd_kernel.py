"""The LeNet step at batch 4 with torch's default SGD against its fused kernel, on the CPU.

    python benchmarks/sgd_kernel.py

The bare step (forward, loss, backward, SGD with momentum 0.9) on one fixed batch, in the
kit's channels_last layout, with each kernel in turn for --rounds alternating rounds; prints
each round and the medians. Why cifarkit.train.make_optimizer asks for fused=True on the CPU.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifarkit.cli import positive_int  # noqa: E402
from Original_version_model import build_model  # noqa: E402


def step_speed(fused, batch_size, steps, warmup=20):
    """Images/s of the bare LeNet step with the default SGD (fused=None) or the fused one."""
    torch.manual_seed(0)
    model = build_model({}).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, fused=fused)
    inputs = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch_size,))
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        loss = F.cross_entropy(model(inputs), targets, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch_size * steps / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--steps", type=positive_int, default=1500)
    parser.add_argument("--rounds", type=positive_int, default=5)
    args = parser.parse_args(argv)
    speeds = {"default": [], "fused": []}
    for _ in range(args.rounds):
        speeds["default"].append(step_speed(None, args.batch_size, args.steps))
        speeds["fused"].append(step_speed(True, args.batch_size, args.steps))
    print(f"LeNet step, batch {args.batch_size}, CPU, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {args.rounds} alternating rounds of {args.steps} steps")
    for name, values in speeds.items():
        print(f"  SGD {name:8s} median {statistics.median(values):8.0f} img/s   rounds: "
              + ", ".join(f"{value:.0f}" for value in values))
    ratio = statistics.median(speeds["fused"]) / statistics.median(speeds["default"])
    print(f"  fused / default: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
