"""Runs the Task 3 script under torchrun, with instrumentation the DDP tests need.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_driver.py ARGS

Environment: DDP_TEST_DUMP=DIR   every rank saves its final weights as DIR/rank<R>.pth
             DDP_TEST_KILL=N     rank 1 kills itself (SIGKILL) at its N-th stop check of the
                                 first attempt, as a crashed worker would die
"""
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import Original_version_model_multiGPU as script  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402
from cifarkit import train  # noqa: E402

# 300 generated images at batch 8: 38 steps an epoch, a stop check every 25.
script.CONFIGS = [{"num_epochs": 3, "lr": 0.01, "momentum": 0.9, "batch_size": 8}]
real_train_config = train.train_config


def instrumented(model, optimizer, config, data, seed, progress, save, runtime,
                 scheduler=None, stop_requested=None, **kwargs):
    checks = []
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def maybe_die():
        checks.append(1)
        if (runtime.rank == 1 and first_attempt
                and len(checks) == int(os.environ.get("DDP_TEST_KILL", "0"))):
            os.kill(os.getpid(), signal.SIGKILL)
        return stop_requested()

    status = real_train_config(model, optimizer, config, data, seed, progress, save, runtime,
                               scheduler, stop_requested=maybe_die, **kwargs)
    if os.environ.get("DDP_TEST_DUMP"):
        torch.save(rt.unwrap(model).state_dict(),
                   Path(os.environ["DDP_TEST_DUMP"]) / f"rank{runtime.rank}.pth")
    return status


train.train_config = instrumented

if __name__ == "__main__":
    sys.exit(script.main())
