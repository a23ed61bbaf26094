"""What the test drivers (long_run.py, ddp_driver.py) add to the kit's training, so that a
test can interrupt a run at a known point of its training instead of guessing with sleeps.

Environment, read by install():
    TEST_PAUSE_AT=C:E:K  at the K-th stop check inside epoch E of the C-th config this process
                         trains, create TEST_MARKERS/paused-rank<R> and wait until a signal asks
                         the run to stop: the test then sends its signal at that point
    TEST_KILL_AT=C:E:K   there, rank 1 kills itself with SIGKILL (as a crashed worker dies) and
                         leaves TEST_MARKERS/killed-rank1
    TEST_MARKERS=DIR     where those files go
    DDP_TEST_KILL=N      rank 1 kills itself at its N-th stop check of any kind (inside an
                         epoch or after one), no marker (tests/test_distributed.py)
    DDP_TEST_DUMP=DIR    every rank saves its final weights as DIR/rank<R>.pth and its exit
                         status as DIR/exit-rank<R>

A stop check follows every step in one process, every 25th step under torchrun, and each
epoch's end. Only a first attempt is paused or killed (torchrun's restarts, and reruns without the variables, run on).
"""
import os
import signal
import sys
import time
from pathlib import Path

import torch

from cifarkit import runtime as rt
from cifarkit import signals, train

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
    """Wrap train.train_config, train.epoch_batches and the stop check (see the module
    docstring): public seams, each called once a config, once an epoch, once a check."""
    real_train_config, real_epoch_batches = train.train_config, train.epoch_batches
    real_requested = signals.StopRequest.requested
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    pause_at, kill_at = _point("TEST_PAUSE_AT"), _point("TEST_KILL_AT")
    kill_at_check = int(os.environ.get("DDP_TEST_KILL", "0"))
    rank = int(os.environ.get("RANK", "0"))
    where = {"config": 0, "epoch": 0, "check": 0, "checks": 0}

    def epoch_batches(*args, **kwargs):
        where.update(epoch=where["epoch"] + 1, check=0)
        return real_epoch_batches(*args, **kwargs)

    def requested(stop):
        where["checks"] += 1
        if first_attempt and where["checks"] == kill_at_check and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        where["check"] += 1
        point = (where["config"], where["epoch"], where["check"])
        if first_attempt and point == kill_at and rank == 1:
            _marker("killed-rank1")
            os.kill(os.getpid(), signal.SIGKILL)
        if first_attempt and point == pause_at:
            _pause(rank, lambda: real_requested(stop))
        return real_requested(stop)

    def train_config(job, training, stop):
        where.update(config=where["config"] + 1, epoch=training.progress["epoch"])
        status = real_train_config(job, training, stop)
        if os.environ.get("DDP_TEST_DUMP"):
            torch.save(rt.unwrap(training.model).state_dict(),
                       Path(os.environ["DDP_TEST_DUMP"]) / f"rank{rank}.pth")
        return status

    train.train_config, train.epoch_batches = train_config, epoch_batches
    signals.StopRequest.requested = requested


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
