"""The CUDA paths, checked on the CPU: GPUs are faked with monkeypatch where the logic only
asks torch what hardware there is, and DataParallel's per-replica threads are reproduced
with a plain thread, which is what torch.nn.parallel.parallel_apply starts for each GPU."""
import pytest
import torch

from cifarkit import runtime as rt

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def backend_flags():
    """init_runtime sets process-wide cuDNN and matmul flags for a CUDA runtime: put them
    back after the test, as it found them."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
     torch.backends.cuda.matmul.allow_tf32) = saved


def fake_gpus(monkeypatch, capabilities):
    """Make torch report one GPU per (major, minor) compute capability, as on a machine that
    has them; is_bf16_supported says yes everywhere, as it does on V100 and T4 (emulation)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)

    def capability(device=None):
        index = device if isinstance(device, int) else getattr(device, "index", None)
        return capabilities[index or 0]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# bf16 only where the GPU has it in hardware; fp16 with a GradScaler that resumes

@pytest.mark.parametrize("capability, dtype, precision", [
    ((7, 0), torch.float16, "fp16 autocast with loss scaling"),   # V100
    ((7, 5), torch.float16, "fp16 autocast with loss scaling"),   # T4
    ((8, 0), torch.bfloat16, "bf16 autocast"),                    # A100
    ((9, 0), torch.bfloat16, "bf16 autocast"),                    # H100
])
def test_bf16_only_from_compute_capability_8(capability, dtype, precision, monkeypatch,
                                             backend_flags):
    fake_gpus(monkeypatch, [capability])
    runtime = rt.init_runtime("cuda", amp="auto")
    assert runtime.amp_dtype == dtype
    assert rt.precision(runtime) == precision


def test_dataparallel_over_mixed_gpus_uses_fp16(monkeypatch, backend_flags):
    fake_gpus(monkeypatch, [(8, 0), (7, 5)])
    runtime = rt.init_runtime("cuda", data_parallel=True, amp="auto")
    assert runtime.data_parallel
    assert runtime.amp_dtype == torch.float16  # the T4 has no bf16 in hardware
# --amp off is IEEE fp32 on CUDA, and recorded as what ran

def test_cuda_never_runs_tf32_so_amp_off_is_the_fp32_it_records(monkeypatch, backend_flags):
    fake_gpus(monkeypatch, [(8, 0)])
    # PyTorch's defaults let cuDNN convolutions run in TF32; start with matmuls on it too
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    runtime = rt.init_runtime("cuda", amp="off")
    assert runtime.amp_dtype is None and rt.precision(runtime) == "fp32"
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    runtime = rt.init_runtime("cuda", amp="on")
    assert rt.precision(runtime) == "bf16 autocast"
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
