"""The one place for devices, processes and parallel wrapping.

Launched with plain ``python``, a script is one process on one device (or, for the Task 3
script, nn.DataParallel over every visible GPU). Launched by ``torchrun``, each process is
one rank of DistributedDataParallel: NCCL on GPUs, gloo on the CPU.
"""
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

from .errors import RankError, UserError


# How long a rank waits for the others, at start-up and in every collective: torch's own
# defaults for each backend. The store, where ranks find each other, gets the same: its
# own default (5 min) would end a multi-machine start while the first machine downloads.
TIMEOUTS = {"nccl": default_pg_nccl_timeout, "gloo": default_pg_timeout}


# Not user flags: benchmarks/gpu_check.py sets these to run fp16 with loss scaling, the path
# of GPUs without bf16 (V100, T4), on a GPU that has bf16,
FORCE_FP16 = "CIFARKIT_FORCE_FP16"
DETERMINISTIC = "CIFARKIT_DETERMINISTIC"  # and the resume check's cuDNN kernels fixed


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = None      # "nccl" or "gloo" under torchrun, else None
    data_parallel: bool = False
    amp_dtype: torch.dtype = None   # autocast dtype (bf16, or fp16 on older GPUs); None: fp32
    compile: bool = False           # wrap the model in torch.compile
    devices: list = None            # under torchrun, each rank's device_names

    @property
    def distributed(self):
        return self.backend is not None

    @property
    def is_main(self):
        """Rank 0: the one process that prints, downloads and writes files."""
        return self.rank == 0


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def is_main_process():
    """True before a Runtime exists too (rank from torchrun's environment)."""
    return os.environ.get("RANK", "0") == "0"


def check_device_request(requested):
    if requested not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {requested}: choose auto, cpu or cuda.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch here "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). "
                        "Use --device cpu or auto.")


def init_runtime(requested, data_parallel=False, amp="auto", compile=False, cpu_amp=False):
    """Device, process group and speed settings for this process; refuses impossible
    requests up front. ``amp``: "on", "off" or "auto": on for CUDA; on the CPU only when
    ``cpu_amp`` (the script measured bf16 faster for its model) and the processor computes
    bf16 in hardware."""
    runtime = _init_devices(requested, data_parallel)
    if compile and runtime.data_parallel:
        # DataParallel copies the model onto every GPU and runs the copies in threads, each
        # step; torch.compile around it cannot compile that and runs it eagerly, and a
        # compiled model inside it (fresh replicas every step) is untried on GPUs here. The
        # results would say "compiled" for a run that gained nothing: refuse instead.
        raise UserError(f"--compile with nn.DataParallel over {torch.cuda.device_count()} GPUs "
                        f"gains nothing: torch.compile cannot see into DataParallel's "
                        f"per-step replicas. Use torchrun --nproc-per-node="
                        f"{torch.cuda.device_count()} (one compiled model per GPU), or drop "
                        f"--compile.")
    if runtime.device.type == "cuda":
        # Batch shapes repeat every epoch (the last, smaller batch is one more shape, tuned
        # once), so cuDNN's autotuning pays for itself. gpu_check's resume check turns it
        # off (DETERMINISTIC): two processes then pick the same kernels.
        deterministic = os.environ.get(DETERMINISTIC) == "1"
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        # Never TF32: --amp off is the report's IEEE fp32 (cuDNN convolutions would
        # otherwise run in TF32 by default), and under autocast every convolution and matmul
        # already runs in bf16 or fp16, so TF32 would speed up nothing there. The results'
        # "fp32" is then exactly what ran.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    runtime.amp_dtype = agreed_amp_dtype(gather(local_amp_dtype(runtime, amp, cpu_amp), runtime))
    if runtime.distributed:
        runtime.devices = gather(device_names(runtime), runtime)
    runtime.compile = compile
    return runtime


def local_amp_dtype(runtime, amp, cpu_amp):
    """The autocast dtype this process would pick alone (None: fp32)."""
    auto_on = runtime.device.type == "cuda" or (cpu_amp and cpu_has_native_bf16())
    if amp == "on" or (amp == "auto" and auto_on):
        if os.environ.get(FORCE_FP16) == "1":  # benchmarks/gpu_check.py's fp16-scaler check
            return torch.float16
        return cuda_amp_dtype(runtime) if runtime.device.type == "cuda" else torch.bfloat16
    return None


def agreed_amp_dtype(choices):
    """One autocast dtype for every rank, from each rank's own choice: ranks that train in
    different arithmetic (bf16 beside fp16 with a loss scale, on GPUs of two generations)
    would average gradients scaled differently and update their copies differently. fp32
    where any rank is in fp32, else fp16 (with loss scaling) where any rank lacks bf16,
    else bf16."""
    if None in choices:
        return None
    return torch.float16 if torch.float16 in choices else choices[0]


def cuda_amp_dtype(runtime):
    """bf16 where every GPU this process computes on has it in hardware (compute capability
    8.0 up: A100, RTX 30xx and later, H100), else fp16 with loss scaling. Not
    torch.cuda.is_bf16_supported(): it also says yes on V100 and T4, which emulate bf16,
    slower than fp16."""
    devices = range(torch.cuda.device_count()) if runtime.data_parallel else [runtime.device]
    native = all(torch.cuda.get_device_capability(device)[0] >= 8 for device in devices)
    return torch.bfloat16 if native else torch.float16


def cpu_has_native_bf16():
    """AVX512-BF16 or AMX: bf16 runs in hardware. Elsewhere oneDNN emulates bf16, which is
    slower than fp32, so --amp auto leaves such CPUs in fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, may go
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def precision(runtime):
    """What the results JSON records as the arithmetic used."""
    if runtime.amp_dtype is None:
        return "fp32"
    if runtime.amp_dtype == torch.float16:
        return "fp16 autocast with loss scaling"
    return "bf16 autocast"


def _init_devices(requested, data_parallel):
    check_device_request(requested)
    if not launched_by_torchrun():
        use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        # data_parallel on the Runtime means DataParallel is used: asked for, and GPUs are
        # several (over one GPU it would only add a copy per step)
        return Runtime(torch.device("cuda" if use_cuda else "cpu"),
                       data_parallel=data_parallel and use_cuda
                       and torch.cuda.device_count() > 1)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    use_cuda = torchrun_device(requested, local_world, gpus) == "cuda"
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    timeout = TIMEOUTS[backend]
    try:
        dist.init_process_group(backend, store=_attempt_store(rank, world_size, timeout),
                                rank=rank, world_size=world_size, timeout=timeout,
                                device_id=device if use_cuda else None)
    except dist.DistError as error:  # a rank that never came: its machine is still downloading?
        raise RankError(f"rank {rank} waited {timeout} for the other ranks to start, in vain "
                        f"({str(error).splitlines()[0][:200]}). Is torchrun running on every "
                        f"machine? A first download can be started beforehand with one "
                        f"plain `python` run.") from None
    return Runtime(device, rank, world_size, local_rank, backend)


def check_configs_fit(selected, runtime):
    """Refuse configs the ranks cannot train: a global batch smaller than the ranks, sync_bn
    on CPU processes."""
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
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer",
                                  "remote worker", "Broken pipe"))


def torchrun_device(requested, local_world, gpus):
    """"cuda" or "cpu" for the ``local_world`` torchrun processes of a machine with ``gpus``
    GPUs: one GPU each, or the CPU for all of them.

    --device auto with GPUs in the machine but fewer than the processes is refused, not run
    on the CPU: a user who has GPUs and gets a CPU run loses hours to a wrong
    --nproc-per-node, while --device cpu asks for CPU processes on purpose."""
    if requested == "cpu" or (requested == "auto" and gpus == 0):
        return "cpu"
    if gpus < local_world:
        raise UserError(f"--device {requested}: {local_world} processes on this machine "
                        f"(--nproc-per-node) but only {gpus} GPU(s); one GPU per process is "
                        f"needed. Use --nproc-per-node={gpus} to train on the GPUs, or "
                        f"--device cpu to train {local_world} CPU processes.")
    return "cuda"


def _attempt_store(rank, world_size, timeout):
    """torchrun's key-value store, with keys of their own for each restart of the workers.

    Without the prefix, workers restarted by --max-restarts can read the addresses that the
    dead attempt's workers left in torchrun's store, and fail to connect (seen with gloo on
    torch 2.14: "Gloo connectFullMesh failed ... Connection refused")."""
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size, is_master=rank == 0 and not agent_hosts_store,
                          timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"cifarkit/attempt-{attempt}", store)


def close(runtime):
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def device_names(runtime):
    """What this process computes on: ["cpu"], its GPU, or every GPU DataParallel uses."""
    if runtime.device.type != "cuda":
        return ["cpu"]
    if runtime.data_parallel:
        return [f"cuda:{index} ({torch.cuda.get_device_name(index)})"
                for index in range(torch.cuda.device_count())]
    return [f"{runtime.device} ({torch.cuda.get_device_name(runtime.device)})"]


def recorded_devices(runtime):
    """The results JSON's devices: this process's, or under torchrun one line per rank
    (each machine's GPUs may differ)."""
    if not runtime.distributed:
        return device_names(runtime)
    return [f"rank {rank}: {', '.join(names)}" for rank, names in enumerate(runtime.devices)]


# DDP's word for it: forward_sync_buffers from torch 2.13 on (broadcast_buffers warns there)
NO_BUFFER_BROADCAST = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                       inspect.signature(nn.parallel.DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})


def place_model(model, runtime, sync_bn=False):
    """Move ``model`` to the device and wrap it: DDP under torchrun, else DataParallel when
    the runtime uses it (several GPUs)."""
    if runtime.distributed and sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # channels_last: what tensor cores want, and faster on the CPU too (oneDNN): measured
    # 10-19% per step for LeNet and ResNet-18 on this project's CPU (benchmarks/RESULTS.md)
    model = model.to(runtime.device, memory_format=torch.channels_last)
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # No broadcast of BatchNorm's buffers before each forward: an out-of-memory error
        # inside a forward, and the step that keeps the ranks company after it, would put
        # that broadcast out of step with the gradient all-reduce, and the ranks would hang.
        # Nothing changes for rank 0, the one rank that tests, saves and checkpoints: the
        # broadcast copied its buffers to the others, and its own were only ever updated
        # from its own batches, as now (tests/test_distributed.py: the weights, with their
        # buffers, match the run with the broadcast).
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                    **NO_BUFFER_BROADCAST)
    elif runtime.data_parallel:
        if runtime.amp_dtype is not None:
            model = Autocast(model, runtime.device.type, runtime.amp_dtype)
        model = nn.DataParallel(model)
    return torch.compile(model) if runtime.compile else model


class Autocast(nn.Module):
    """Runs ``module`` under autocast in ``dtype``, whatever thread calls it.

    DataParallel runs each replica in a thread of its own and re-enters autocast there with
    the caller's on/off switch only (torch/nn/parallel/parallel_apply.py); a new thread's
    autocast dtype is the default, fp16 on CUDA, so without this a "bf16" run would train in
    fp16 with no loss scaling."""

    def __init__(self, module, device_type, dtype):
        super().__init__()
        self.module = module
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def memory_format(batch):
    """Input batches in the model's memory layout: channels_last (see place_model)."""
    return batch.contiguous(memory_format=torch.channels_last)


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
    """Sum a tensor over all ranks (in place); a no-op in one process."""
    if runtime.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag, runtime):
    """True on every rank when ``flag`` is true on any rank."""
    return any_rank_each([flag], runtime)[0]


def any_rank_each(flags, runtime):
    """For each flag (a bool or a one-element bool tensor on the device): True on every rank
    when it is true on any rank. One all-reduce and one host sync for all of them."""
    if not runtime.distributed:  # nobody to ask: no tensors to build
        return [bool(flag) for flag in flags]
    values = torch.stack([torch.as_tensor(flag, device=runtime.device).float().reshape(())
                          for flag in flags])
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def from_main(produce, runtime):
    """Run ``produce()`` on rank 0 and hand its result to every rank. A UserError raised on
    rank 0 is raised on every rank, so all of them stop with the same message."""
    if not runtime.distributed:
        return produce()
    box = [None]
    if runtime.is_main:
        try:
            box[0] = ("ok", produce())
        except UserError as error:
            box[0] = ("error", str(error))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise UserError(value)
    return value


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
