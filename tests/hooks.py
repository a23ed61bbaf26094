"""What the test drivers (long_run.py, ddp_driver.py) add to cifarkit.train, so that a test can
interrupt a run at a known point of its training instead of guessing with sleeps.

Environment, read by install():
    TEST_PAUSE_AT=C:E:K  at the K-th stop check inside epoch E of the C-th config this process
                         trains, create TEST_MARKERS/paused-rank<R> and wait until a signal asks
                         the run to stop: the test then sends its signal at that point
    TEST_KILL_AT=C:E:K   there, rank 1 kills itself with SIGKILL (as a crashed worker dies) and
                         leaves TEST_MARKERS/killed-rank1
    TEST_MARKERS=DIR     where those files go
    DDP_TEST_KILL=N      rank 1 kills itself at its N-th stop check of any kind (inside an
                         epoch or after one), no marker (tests/test_safety.py)
    DDP_TEST_DUMP=DIR    every rank saves its final weights as DIR/rank<R>.pth and its exit
                         status as DIR/exit-rank<R>

A stop check follows every step in one process, every 25th step under torchrun. Only a first
attempt is paused or killed (torchrun's restarts, and reruns without the variables, run on).
"""
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from cifarkit import runtime as rt
from cifarkit import train

PAUSE_LIMIT_S = 300  # a paused run that no test signals gives up, rather than hang CI


def _point(name):
    value = os.environ.get(name)
    return tuple(int(part) for part in value.split(":")) if value else None


def _marker(name):
    Path(os.environ["TEST_MARKERS"], name).touch()


def _pause(rank, stop_requested):
    _marker(f"paused-rank{rank}")
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not stop_requested():
        if time.monotonic() > deadline:
            sys.exit(f"rank {rank}: paused {PAUSE_LIMIT_S} s and no signal came")
        time.sleep(0.01)


def install():
    """Wrap train.train_config and train.train_epoch (see the module docstring)."""
    real_train_config, real_train_epoch = train.train_config, train.train_epoch
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    pause_at, kill_at = _point("TEST_PAUSE_AT"), _point("TEST_KILL_AT")
    kill_at_check = int(os.environ.get("DDP_TEST_KILL", "0"))
    where = {"config": 0, "epoch": 0, "check": 0, "inside_epoch": False, "checks": 0}

    def tracked_train_epoch(*args, **kwargs):
        where.update(epoch=where["epoch"] + 1, check=0, inside_epoch=True)
        try:
            return real_train_epoch(*args, **kwargs)
        finally:
            where["inside_epoch"] = False

    def instrumented(step, config, data, seed, progress, save, hooks=None):
        where.update(config=where["config"] + 1, epoch=progress["epoch"])
        hooks = hooks if hooks is not None else train.Hooks()
        runtime, stop_requested = step.runtime, hooks.stop_requested

        def hooked_stop_requested():
            where["checks"] += 1
            if first_attempt and where["checks"] == kill_at_check and runtime.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if where["inside_epoch"]:  # not the check that follows an epoch's end
                where["check"] += 1
                point = (where["config"], where["epoch"], where["check"])
                if first_attempt and point == kill_at and runtime.rank == 1:
                    _marker("killed-rank1")
                    os.kill(os.getpid(), signal.SIGKILL)
                if first_attempt and point == pause_at:
                    _pause(runtime.rank, stop_requested)
            return stop_requested()

        status = real_train_config(step, config, data, seed, progress, save,
                                   replace(hooks, stop_requested=hooked_stop_requested))
        if os.environ.get("DDP_TEST_DUMP"):
            torch.save(rt.unwrap(step.model).state_dict(),
                       Path(os.environ["DDP_TEST_DUMP"]) / f"rank{runtime.rank}.pth")
        return status

    train.train_config, train.train_epoch = instrumented, tracked_train_epoch


def run(main):
    """Run a script's main() and exit with its status (recorded under DDP_TEST_DUMP)."""
    status = main()
    if os.environ.get("DDP_TEST_DUMP"):
        rank = os.environ.get("RANK", "0")
        Path(os.environ["DDP_TEST_DUMP"], f"exit-rank{rank}").write_text(str(status))
    sys.exit(status)


class BatchNormNet(torch.nn.Module):
    """A small model with BatchNorm, for the DDP tests of its buffers. With ``oom_at`` = N,
    rank 1's N-th training forward in this process (of any config) runs out of CUDA memory
    (simulated) after the BatchNorm layer has run. With ``collectives``, each training
    forward all-reduces batch statistics before and after that point, as SyncBatchNorm
    layers do (which run on CUDA only)."""
    steps = 0  # training forwards of every instance

    def __init__(self, oom_at=None, collectives=False):
        super().__init__()
        self.conv, self.norm = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)
        self.oom_at, self.collectives = oom_at, collectives

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))
        if self.training:
            BatchNormNet.steps += 1
            self.synced(x)
            if os.environ.get("RANK") == "1" and BatchNormNet.steps == self.oom_at:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            self.synced(x)
        return self.fc(x.mean(dim=(2, 3)))

    def synced(self, x):
        if self.collectives:
            torch.distributed.all_reduce(x.detach().mean(dim=(0, 2, 3)))
