"""Devices, processes and parallel wrapping: plain ``python`` is one process (Task 3: with
nn.DataParallel over every GPU); under ``torchrun`` each process is one rank of DDP."""
import contextlib
import inspect
import os
import shlex
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

from .errors import RankError, UserError

try:
    import fcntl
except ImportError:  # Windows: runs on one CPU do not take turns (CpuTurns)
    fcntl = None

# torch's defaults, the store's too: its own 5 min would end a start while one machine downloads
TIMEOUTS = {"nccl": default_pg_nccl_timeout, "gloo": default_pg_timeout}
FORCE_FP16 = "CIFARKIT_FORCE_FP16"  # GPU tests only: the fp16 path of GPUs without bf16
DETERMINISTIC = "CIFARKIT_DETERMINISTIC"  # GPU tests only: fixed cuDNN kernels, for resume checks
# The GPU tests' torchrun on one GPU: its processes share the GPUs, over gloo (NCCL refuses two
# ranks on one GPU).
SHARE_GPU = "CIFARKIT_SHARE_GPU"
# DDP's word for it: forward_sync_buffers from torch 2.13 on (broadcast_buffers warns there)
NO_BUFFER_BROADCAST = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                       inspect.signature(nn.parallel.DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    backend: str = None             # "nccl" or "gloo" under torchrun, else None
    data_parallel: bool = False     # nn.DataParallel: asked for, and several GPUs
    amp_dtype: torch.dtype = None   # autocast dtype (bf16, or fp16 on older GPUs); None: fp32
    compile: bool = False           # wrap the model in torch.compile
    devices: list = None            # under torchrun, each rank's device_names
    turns: "CpuTurns" = None        # set by share_cpu: taking turns with other runs on the CPU

    @property
    def distributed(self):
        return self.backend is not None

    @property
    def is_main(self):  # rank 0: the one process that prints, downloads and writes files
        return self.rank == 0


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def is_main_process():
    """True before a Runtime exists too (rank from torchrun's environment)."""
    return os.environ.get("RANK", "0") == "0"


def check_device_request(requested):
    if requested not in ("auto", "cpu", "cuda", "mps"):
        raise UserError(f"--device {requested}: choose auto, cpu, cuda or mps.")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's GPU (MPS) is not available here: it needs a Mac "
                        "with Apple silicon, macOS 12.3 or later, and a torch built with MPS "
                        f"(this is torch {torch.__version__}). Use --device cpu or auto.")
    if requested == "mps" and launched_by_torchrun():
        raise UserError("--device mps under torchrun: a Mac has one GPU, which one process "
                        "uses. Run the script with plain python.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch here "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). "
                        "Use --device cpu or auto.")


def check_gpu_supported(index):
    """Refuse a GPU this torch build has no kernels for: torch only warns, then fails at the
    first kernel. sm_XY runs on major X from minor Y up; compute_XY (PTX) on anything from XY."""
    major, minor = torch.cuda.get_device_capability(index)
    archs = torch.cuda.get_arch_list()
    codes = {(kind, int("".join(filter(str.isdigit, arch)))) for kind, _, arch in
             (name.partition("_") for name in archs)}  # sm_90a -> ("sm", 90)
    if not archs or any((kind == "sm" and code // 10 == major and code % 10 <= minor)
                        or (kind == "compute" and code <= major * 10 + minor)
                        for kind, code in codes):
        return
    raise UserError(f"--device cuda: {torch.cuda.get_device_name(index)} (compute capability "
                    f"{major}.{minor}) has no kernels in this torch build (torch "
                    f"{torch.__version__}, CUDA {torch.version.cuda}: {', '.join(archs)}). "
                    f"Install a torch build that supports it (pytorch.org, \"previous "
                    f"versions\"), or run with --device cpu.")


def init_runtime(requested, data_parallel=False, amp="auto", compile=False, cpu_amp=False):
    """Device, process group and speed settings for this process; refuses impossible requests
    up front. ``amp`` "auto": on for CUDA; on the CPU only when ``cpu_amp`` (the script
    measured bf16 faster for its model) and the processor computes bf16 in hardware."""
    check_device_request(requested)
    if not launched_by_torchrun():
        use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        use_mps = requested == "mps" or (requested == "auto" and not use_cuda
                                         and torch.backends.mps.is_available())
        runtime = Runtime(torch.device("cuda" if use_cuda else "mps" if use_mps else "cpu"),
                          data_parallel=data_parallel and use_cuda
                          and torch.cuda.device_count() > 1)
    else:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        shared = os.environ.get(SHARE_GPU) == "1"
        use_cuda = torchrun_device(requested, 1 if shared else local_world, gpus) == "cuda"
        device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK']) % max(gpus, 1)}"
                              if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        backend = "nccl" if use_cuda and not shared else "gloo"
        timeout = TIMEOUTS[backend]
        try:
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                  world_size, timeout=timeout, is_master=rank == 0 and
                                  os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True")
            # keys per restart: else --max-restarts workers read the dead attempt's addresses
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend, store=dist.PrefixStore(
                f"cifarkit/attempt-{attempt}", store), rank=rank, world_size=world_size,
                timeout=timeout, device_id=device if backend == "nccl" else None)
        except dist.DistError as error:  # a rank that never came: its machine downloading?
            raise RankError(f"rank {rank} waited {timeout} for the other ranks to start, in "
                            f"vain ({str(error).splitlines()[0][:200]}). Is torchrun running "
                            f"on every machine? A first download can be started beforehand "
                            f"with one plain `python` run.") from None
        runtime = Runtime(device, rank, world_size, backend)
    if compile and runtime.data_parallel:  # torch.compile cannot see into its replicas
        raise UserError(f"--compile with nn.DataParallel over {torch.cuda.device_count()} GPUs "
                        f"gains nothing: torch.compile cannot see into DataParallel's "
                        f"per-step replicas. Use torchrun --nproc-per-node="
                        f"{torch.cuda.device_count()} (one compiled model per GPU), or drop "
                        f"--compile.")
    if compile:
        check_compiler()
    if runtime.device.type == "cuda":
        for index in range(torch.cuda.device_count()) if runtime.data_parallel else \
                [runtime.device.index or 0]:
            check_gpu_supported(index)
        # batch shapes repeat every epoch, so cuDNN's autotuning pays for itself
        deterministic = os.environ.get(DETERMINISTIC) == "1"
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        # never TF32: --amp off is the IEEE fp32 the results record
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    # one dtype for all ranks, else their copies drift: fp32 if any picks it, else fp16 if any does
    choices = gather(local_amp_dtype(runtime, amp, cpu_amp), runtime)
    runtime.amp_dtype = (None if None in choices
                         else torch.float16 if torch.float16 in choices else choices[0])
    if runtime.distributed:
        runtime.devices = gather(device_names(runtime), runtime)
    runtime.compile = compile
    return runtime


def check_compiler():
    """Refuse --compile without the C++ compiler (found as torch finds it) and Python's headers
    that torch.compile builds kernels with: else its first step ends in a long InductorError."""
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    try:
        works = subprocess.run([*shlex.split(compiler), "--version"], capture_output=True,
                               timeout=60).returncode == 0
    except (OSError, ValueError, subprocess.SubprocessError):
        works = False
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    missing = [what for what, found in (
        (f"a C++ compiler (`{compiler} --version` fails here)", works),
        (f"Python's headers ({headers})", headers.is_file())) if not found]
    if missing:
        raise UserError(f"--compile needs {' and '.join(missing)}, to build the kernels "
                        f"torch.compile makes. Install them (Debian or Ubuntu: sudo apt install "
                        f"g++ python3-dev; macOS: xcode-select --install) or set CXX to a "
                        f"compiler that works, or run without --compile.")


def local_amp_dtype(runtime, amp, cpu_amp):
    """The autocast dtype this process would pick alone (None: fp32). bf16 by capability, not
    torch.cuda.is_bf16_supported(): that says yes on V100 and T4, which emulate it."""
    auto_on = runtime.device.type == "cuda" or (runtime.device.type == "cpu" and cpu_amp
                                                and cpu_has_native_bf16())
    if not (amp == "on" or (amp == "auto" and auto_on)):
        return None
    if runtime.device.type == "mps":  # MPS's autocast covers too few layers and no scaler
        raise UserError("--amp on with --device mps: the kit trains in fp32 on a Mac's GPU "
                        "(mixed precision there is not supported yet). Use --amp auto or off.")
    if os.environ.get(FORCE_FP16) == "1":
        return torch.float16
    if runtime.device.type != "cuda":
        return torch.bfloat16
    gpus = range(torch.cuda.device_count()) if runtime.data_parallel else [runtime.device]
    native = all(torch.cuda.get_device_capability(gpu)[0] >= 8 for gpu in gpus)
    return torch.bfloat16 if native else torch.float16


def cpu_has_native_bf16():
    """AVX512-BF16 or AMX. Elsewhere oneDNN emulates bf16, slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, may go
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def precision(runtime):  # what the results JSON records as the arithmetic used
    names = {None: "fp32", torch.float16: "fp16 autocast with loss scaling"}
    return names.get(runtime.amp_dtype, "bf16 autocast")


def torchrun_device(requested, local_world, gpus):
    """"cuda" or "cpu" for the ``local_world`` processes of a machine with ``gpus`` GPUs. Too
    few GPUs is refused, not run on the CPU: hours lost to a wrong --nproc-per-node."""
    if requested == "cpu" or (requested == "auto" and gpus == 0):
        return "cpu"
    if gpus < local_world:
        raise UserError(f"--device {requested}: {local_world} processes on this machine "
                        f"(--nproc-per-node) but only {gpus} GPU(s); one GPU per process is "
                        f"needed. Use --nproc-per-node={gpus} to train on the GPUs, or "
                        f"--device cpu to train {local_world} CPU processes.")
    return "cuda"


def check_configs_fit(selected, runtime):
    """Refuse a global batch smaller than the ranks, and sync_bn on CPU processes."""
    for number, chosen in selected:
        if chosen.get("sync_bn") and runtime.distributed and runtime.device.type != "cuda":
            raise UserError(f"config_{number}: sync_bn needs GPUs (PyTorch's SyncBatchNorm "
                            f"runs on CUDA only); remove it to train on CPU processes.")
        if chosen["batch_size"] < runtime.world_size:
            raise UserError(f"config_{number}: batch_size {chosen['batch_size']} is smaller than "
                            f"the {runtime.world_size} processes; batch_size is the global "
                            f"batch, split across them.")


def peer_lost(error):
    """Whether ``error`` says another rank went away (killed, crashed) mid-collective."""
    return isinstance(error, dist.DistError) or any(
        sign in str(error) for sign in ("Connection closed by peer", "Connection reset by peer",
                                        "remote worker", "Broken pipe"))


def leave(status):
    """End the process now with ``status`` (1 after an uncaught error), skipping the
    interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(1 if getattr(sys, "last_value", None) is not None else status)


def close(runtime):
    if runtime.turns is not None:
        runtime.turns.close()
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


TURN_SECONDS = 0.2  # how long a run computes before a waiting run gets the CPU
STUCK_AFTER = 60.0  # a turn held this long without a step's end: a debugger, or compiling
ALONE_FOR = 30.0    # a run that finds the holder stopped or stuck goes on alone this long
STOPPED = ("The run whose turn it is at this CPU (pid {}) is stopped (Ctrl-Z?): this run goes "
           "on without turns.")
STUCK = ("The run whose turn it is at this CPU (pid {}) has not ended a step in {} s: this run "
         "goes on without turns.")
TURNS_OFF = ("No turns at this CPU ({}): beside another run of this kit, this one "
             "will fight it for the cores, each run several times slower.")
TURNS_LINE = ("Another run of this kit is training on this CPU: the runs take turns at it, each "
              "with its {} threads (each slower than alone; the results are the same).")


class CpuTurns:
    """Turns at one CPU for runs at torch's default threads: side by side they fight for the
    cores, and fewer threads each would change the results' last digits. The holder flocks
    "turn" and stamps its pid and time there; waiters share a flock on "waiting"."""

    def __init__(self, say, folder=None):
        folder = Path(folder or tempfile.gettempdir()) / f"cifarkit-cpu-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        owner = folder.lstat()  # another user's folder in a shared /tmp could stall or hang us
        if not stat.S_ISDIR(owner.st_mode) or owner.st_uid != os.getuid() \
                or owner.st_mode & 0o022:
            raise OSError(f"{folder} is not this user's own folder")
        self.path, self.say, self.said, self.told = folder / "turn", say, False, None
        self.held, self.until = False, 0.0
        self.turn, self.waiting, self.waiters = (self.open(folder / name) for name in
                                                 ("turn", "waiting", "waiting"))

    @staticmethod
    def open(path):
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            os.close(handle)
            raise OSError(f"{path} is not a plain file")
        return handle

    def someone_waits(self):
        try:
            fcntl.flock(self.waiters, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self.waiters, fcntl.LOCK_UN)
        return False

    def stuck(self):
        """What to say when the run in its turn will not pass it on soon, or None."""
        pid, _, stamped = os.pread(self.turn, 64, 0).decode(errors="replace").partition(" ")
        try:
            pid, stamped = int(pid), float(stamped)
        except ValueError:  # not written yet
            return None
        with contextlib.suppress(OSError):  # Linux; elsewhere STUCK_AFTER only
            with open(f"/proc/{pid}/stat") as status:
                if status.read().rpartition(")")[2].split()[0] in "Tt":
                    return STOPPED.format(pid)
        return STUCK.format(pid, int(STUCK_AFTER)) if time.time() - stamped > STUCK_AFTER \
            else None

    def take(self):
        """Between steps: keep the turn TURN_SECONDS, then pass it to a waiting run and wait."""
        if time.monotonic() < self.until:
            return
        if self.held:
            waits = self.someone_waits()
            if not waits and not self.replaced():
                return self.keep()
            if waits and not self.said:
                self.said = True
                self.say(TURNS_LINE.format(torch.get_num_threads()))
            self.end()
            time.sleep(0.01)  # the waiting run looks every 5 ms: it takes the turn
        try:
            while True:
                with contextlib.suppress(BlockingIOError):  # a holder looks, for an instant
                    fcntl.flock(self.waiting, fcntl.LOCK_SH | fcntl.LOCK_NB)  # (it may stop)
                try:
                    fcntl.flock(self.turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    why = self.stuck()
                    if why:
                        if why != self.told:
                            self.say(why)
                        self.told, self.until = why, time.monotonic() + ALONE_FOR
                        return
                    time.sleep(0.005)
                    continue
                if self.replaced():  # deleted by hand or by a tmp cleaner: the new one counts
                    os.close(self.turn)
                    self.turn = self.open(self.path)
                    continue
                self.held = True
                return self.keep()
        finally:
            fcntl.flock(self.waiting, fcntl.LOCK_UN)

    def replaced(self):
        try:
            return os.fstat(self.turn).st_ino != os.stat(self.path).st_ino
        except FileNotFoundError:
            return True

    def keep(self):
        """The turn for TURN_SECONDS more; its file says whose it is and when it last moved."""
        self.until = time.monotonic() + TURN_SECONDS
        os.pwrite(self.turn, f"{os.getpid()} {time.time():.1f}\n".ljust(32).encode(), 0)

    def end(self):
        """Pass the turn on (also after the test pass, while this run records and draws)."""
        if self.held:
            fcntl.flock(self.turn, fcntl.LOCK_UN)
            self.held, self.until = False, 0.0

    def close(self):
        for handle in (self.turn, self.waiting, self.waiters):
            os.close(handle)


def share_cpu(runtime, say):
    """CpuTurns for a plain CPU run at torch's default threads; runs with OMP_NUM_THREADS set
    (torchrun sets 1 per rank) are already sized to share the cores."""
    if fcntl and runtime.device.type == "cpu" and not runtime.distributed \
            and "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > 1:
        try:
            runtime.turns = CpuTurns(say)
        except OSError as error:
            say(TURNS_OFF.format(error))


def take_turn(runtime):
    if runtime.turns is not None:
        try:
            runtime.turns.take()
        except OSError as error:  # its folder deleted, locks refused (a network disk)...
            turns, runtime.turns = runtime.turns, None
            turns.say(TURNS_OFF.format(error))
            with contextlib.suppress(OSError):
                turns.close()


def end_turn(runtime):
    if runtime.turns is not None:
        runtime.turns.end()


def device_names(runtime):
    """What this process computes on: ["cpu"], its GPU, or every GPU DataParallel uses."""
    if runtime.device.type != "cuda":
        return {"mps": ["mps (Apple GPU)"]}.get(runtime.device.type, ["cpu"])
    if runtime.data_parallel:
        return [f"cuda:{index} ({torch.cuda.get_device_name(index)})"
                for index in range(torch.cuda.device_count())]
    return [f"{runtime.device} ({torch.cuda.get_device_name(runtime.device)})"]


def recorded_devices(runtime):
    """The results JSON's devices: this process's, or under torchrun a line per rank."""
    if not runtime.distributed:
        return device_names(runtime)
    return [f"rank {rank}: {', '.join(names)}" for rank, names in enumerate(runtime.devices)]


def place_model(model, runtime, sync_bn=False):
    """``model`` on the device, wrapped: DDP under torchrun, else DataParallel where used."""
    if runtime.distributed and sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # channels_last: what tensor cores want, and faster on the CPU too
    model = model.to(runtime.device, memory_format=torch.channels_last)
    if runtime.distributed:
        # no buffer broadcast: after an OOM inside a forward it falls out of step with the
        # all-reduce and the ranks hang; rank 0's buffers (tested, saved) are the same without
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                    **NO_BUFFER_BROADCAST)
    elif runtime.data_parallel:
        if runtime.amp_dtype is not None:
            model = Autocast(model, runtime.device.type, runtime.amp_dtype)
        model = nn.DataParallel(model)
    # static: the smaller last batch gets its own graph (dynamic=None recompiles all as dynamic)
    return torch.compile(model, dynamic=False) if runtime.compile else model


class Autocast(nn.Module):
    """Autocast in ``dtype`` in DataParallel's replica threads too (theirs: fp16, unscaled)."""

    def __init__(self, module, device_type, dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def synchronize(device):
    """Wait for the work queued on ``device`` (a GPU runs it behind Python's back)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def memory_format(batch):
    return batch.contiguous(memory_format=torch.channels_last)  # the model's (place_model)


def unwrap(model):
    """The bare model, whose state_dict has no ``module.`` or ``_orig_mod.`` prefix."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model.module if isinstance(model, Autocast) else model


def shard(index, runtime):
    """This rank's share of one global batch: every world_size-th image from its rank on."""
    return index[runtime.rank::runtime.world_size] if runtime.distributed else index


def all_sum(tensor, runtime):
    if runtime.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag, runtime):
    return any_rank_each([flag], runtime)[0]


def any_rank_each(flags, runtime):
    """Each flag (bool or one-element tensor) true on every rank if on any: one all-reduce."""
    if not runtime.distributed:
        return [bool(flag) for flag in flags]
    values = torch.stack([torch.as_tensor(flag, device=runtime.device).float().reshape(())
                          for flag in flags])
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def from_main(produce, runtime):
    """``produce()`` run on rank 0, its result (or its UserError) handed to every rank."""
    if not runtime.distributed:
        return produce()
    box = [None]
    if runtime.is_main:
        try:
            box[0] = produce()
        except UserError as error:
            box[0] = UserError(str(error))
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], UserError):
        raise box[0]
    return box[0]


def gather(value, runtime):
    """Every rank's ``value``, as a list on every rank (one entry in one process)."""
    if not runtime.distributed:
        return [value]
    values = [None] * runtime.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(runtime):
    if runtime.distributed:
        dist.barrier()
