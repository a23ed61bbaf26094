"""Signals: what SIGINT (Ctrl-C) and SIGTERM do at each phase of a run.

Before training: they stop the run at once, with one line (sigterm_as_interrupt makes
SIGTERM act as Ctrl-C). During training: a first one asks the run to stop after the current
step and save a checkpoint, a second stops it at once (stop_on_signals). Exit status: EXIT.
"""
import contextlib
import signal
import sys
from dataclasses import dataclass, field

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class StopRequest:
    """The signals received so far, and what a first one waits for before the run stops."""
    signals: list = field(default_factory=list)
    doing: str = "the current step"


class Terminated(KeyboardInterrupt):
    """SIGTERM before training started: handled as Ctrl-C is, with the signal's name."""
    signum = signal.SIGTERM


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the data loads and the folder is prepared, SIGTERM stops the run as Ctrl-C does
    (one line, the download's partial files removed) instead of killing it without a word."""
    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_on_signals(say, stop_at_once_on_repeat=True):
    """SIGINT / SIGTERM ask training to stop after the current step (or test pass); a second
    one stops now, except under torchrun, which sends its workers SIGTERM twice (and SIGKILL
    later)."""
    stop = StopRequest()

    def handler(signum, frame):
        if stop.signals:
            if stop_at_once_on_repeat:
                raise KeyboardInterrupt
            return
        stop.signals.append(signum)
        again = " (send it again to stop at once)" if stop_at_once_on_repeat else ""
        say(f"\n{signal.Signals(signum).name}: waiting for {stop.doing} to end, then saving "
            f"a checkpoint and stopping{again}.", file=sys.stderr, flush=True)

    previous = {signum: signal.signal(signum, handler) for signum in EXIT}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
