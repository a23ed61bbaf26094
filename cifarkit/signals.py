"""How a run stops, and the line it says for each way. SIGINT or SIGTERM before training stops
it at once; during training a first one stops it after the current step with a checkpoint, a
second at once."""
import contextlib
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RankError, UserError
from .store import RUNS

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
EXIT_WRITE_FAILED = 1  # the same status as a failed config, as the README says


@dataclass
class StopRequest:
    """The signals received so far, and what a first one waits for before the run stops."""
    signals: list = field(default_factory=list)
    doing: str = "the current step"
    paused: float = 0.0  # seconds stopped by Ctrl-Z (SIGTSTP): not training time

    def requested(self):
        """Whether training should stop (asked after every step, or at each look)."""
        return bool(self.signals)


class Terminated(KeyboardInterrupt):
    """SIGTERM before training started: handled as Ctrl-C is, with the signal's name."""
    signum = signal.SIGTERM


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM acts as Ctrl-C (one line, partial downloads removed), not a silent kill."""
    def handler(signum, frame):
        raise Terminated

    with contextlib.ExitStack() as restore:
        restore.callback(signal.signal, signal.SIGTERM, signal.signal(signal.SIGTERM, handler))
        yield


@contextlib.contextmanager
def deferred():
    """SIGINT and SIGTERM wait until the block has run (a few renames that go together)."""
    both = {signal.SIGINT, signal.SIGTERM}
    with contextlib.ExitStack() as unblock:
        if hasattr(signal, "pthread_sigmask"):  # not on Windows
            signal.pthread_sigmask(signal.SIG_BLOCK, both)
            unblock.callback(signal.pthread_sigmask, signal.SIG_UNBLOCK, both)
        yield


@contextlib.contextmanager
def stop_on_signals(say_, stop_at_once_on_repeat=True):
    """SIGINT / SIGTERM ask training to stop after the current step (or test pass); a second
    one stops now, except under torchrun, which sends its workers SIGTERM twice."""
    stop = StopRequest()

    def handler(signum, frame):
        if stop.signals:
            if stop_at_once_on_repeat:
                raise KeyboardInterrupt
            return
        stop.signals.append(signum)
        again = " (send it again to stop at once)" if stop_at_once_on_repeat else ""
        say_(f"\n{signal.Signals(signum).name}: waiting for {stop.doing} to end, then saving "
             f"a checkpoint and stopping{again}.", file=sys.stderr, flush=True)

    def pause(signum, frame):  # Ctrl-Z: stop at once, and count the time stopped
        started = time.perf_counter()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)  # returns once continued (fg, SIGCONT)
        finally:
            stop.paused += time.perf_counter() - started
            signal.signal(signal.SIGTSTP, pause)

    handlers = {signum: handler for signum in EXIT}
    if getattr(signal, "SIGTSTP", None) and signal.getsignal(signal.SIGTSTP) is signal.SIG_DFL:
        handlers[signal.SIGTSTP] = pause  # not on Windows, nor where the parent ignores it
    with contextlib.ExitStack() as restore:
        for signum, new in handlers.items():
            restore.callback(signal.signal, signum, signal.signal(signum, new))
        yield stop


def say(*args, file=None, **kwargs):
    """print that never stops training: a closed pipe or full disk under stdout silences it."""
    stream = file or sys.stdout
    try:
        print(*args, file=stream, **kwargs)
    except OSError:
        null = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
        setattr(sys, "stderr" if stream is sys.stderr else "stdout", null)


def silent(*args, **kwargs):
    pass


def plain_console():
    """A console that cannot show "±" (an ASCII-only locale) gets escapes, not an error."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def command(script, argv):
    """The command that ran this script, as one can paste it (paths with spaces quoted)."""
    path, typed = Path(script).absolute(), sys.argv[0]
    if typed and Path(typed).absolute() == path:
        shown = typed
    else:
        shown = min(str(path), os.path.relpath(path), key=len)
    return shlex.join(["python", shown, *argv])


def resume_hint(job):
    """How to carry on: the command, less --restart, on a line of its own to be copied."""
    kept = [arg for arg in job.argv if arg != "--restart"]
    if job.runtime.distributed:
        return "To resume, run the same torchrun command again" + (
            " without --restart" if kept != job.argv else "")
    return (f"To resume, run {'the same command' if kept == job.argv else 'this'}:\n  "
            + command(job.script.file, kept))


def stopped_before_training(error, out):
    """Say why the run stopped before anything trained; return the exit status."""
    from . import runtime as rt

    if isinstance(error, UserError):
        if rt.is_main_process() or isinstance(error, RankError):
            say(f"error: {error}", file=sys.stderr)
        elif rt.launched_by_torchrun():
            with contextlib.suppress(KeyboardInterrupt):  # torchrun's SIGTERM, as rank 0 left
                time.sleep(3)  # torchrun stops the others once one leaves: let rank 0 say why
        return 2
    if isinstance(error, KeyboardInterrupt):
        signum = getattr(error, "signum", signal.SIGINT)
        if rt.is_main_process():
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            say(f"\nStopped by {name} before training started; nothing was trained.",
                file=sys.stderr)
        return EXIT[signum]
    return write_failed(out, error)


def stopped_while_training(error, job):
    """Say why training stopped short; return the exit status. What was saved before stays."""
    runs = job.out / RUNS
    if isinstance(error, UserError):  # found only once training began: a damaged checkpoint
        job.say(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C: stop at once
        job.say(f"\nStopped at once. What was saved stays: finished configs in {runs}/, the "
                f"unfinished one's checkpoint (from its last epoch's end) in its run folder "
                f"there.\n{resume_hint(job)}", file=sys.stderr)
        return EXIT[signal.SIGINT]
    return write_failed(job.out, error)  # no barrier: the other ranks cannot know of it


def lost_contact(error, job):
    say(f"error: rank {job.runtime.rank} lost contact with the other ranks "
        f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Another worker has "
        f"probably died. Checkpoints are saved at every epoch's end in each run's folder in "
        f"{job.out / RUNS}/. {resume_hint(job)} "
        f"(torchrun --max-restarts=3 restarts the workers by itself).", file=sys.stderr)
    return EXIT_WRITE_FAILED


def write_failed(out, error):
    link, elsewhere = Path(out) / RUNS, ""
    with contextlib.suppress(OSError):  # a scratch disk behind runs/ may be the full one
        if link.is_symlink() and link.stat().st_dev != Path(out).stat().st_dev:
            elsewhere = f" (or to {link.resolve()}, another disk, which runs/ links to)"
    say(f"error: cannot write to {out}{elsewhere}: {error}. Results saved so far are kept; "
        f"once that is fixed, rerun the same command to carry on.", file=sys.stderr)
    return EXIT_WRITE_FAILED


def interrupted(job, stop, number, finished=False):
    """Say where the signal in ``stop`` stopped the run; return the exit status."""
    where = (f"after config_{number} ended; the next configs have not started" if finished
             else f"during config_{number}; its checkpoint is in its run folder in "
             f"{job.out / RUNS}/")
    job.say(f"Stopped by {signal.Signals(stop.signals[0]).name} {where}. {resume_hint(job)}",
            file=sys.stderr)
    return EXIT[stop.signals[0]]


def say_failed(job, training, status):
    """The line for a training that ran out of memory or diverged (nothing otherwise)."""
    name, batch_size = training.name, training.config["batch_size"]
    if status == "out_of_memory":
        job.say(f"error: {name} ran out of GPU memory at batch_size {batch_size}. Try a "
                f"smaller batch_size in CONFIGS; the other configs carry on, and its "
                f"checkpoint is kept.", file=sys.stderr)
    if status == "diverged":
        where = training.progress["diverged_at"]
        job.say(f"{name}: the loss became NaN or infinite at epoch {where['epoch']}, step "
                f"{where['step']}; this config is stopped and marked diverged. A smaller lr "
                f"usually helps.", file=sys.stderr)


def leave_out_of_step(job, training):
    """Out of GPU memory in a SyncBatchNorm forward: the other ranks wait in a collective this
    rank cannot meet, so it leaves at once and torchrun ends them."""
    say(f"error: rank {job.runtime.rank}: {training.name} ran out of GPU memory at batch_size "
        f"{training.config['batch_size']} inside a forward with SyncBatchNorm (sync_bn), whose "
        f"collectives the other ranks wait in: the ranks cannot stop this config together, so "
        f"the whole run stops. Its checkpoint from the last epoch's end is kept. Try a smaller "
        f"batch_size in CONFIGS, or drop sync_bn.", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_WRITE_FAILED)
