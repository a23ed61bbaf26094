"""The CUDA paths, checked on the CPU: GPUs are faked with monkeypatch where the logic only
asks torch what hardware there is, and DataParallel's per-replica threads are reproduced
with a plain thread, which is what torch.nn.parallel.parallel_apply starts for each GPU."""
import functools
import signal
import threading
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cifarkit import checkpoints, data, train
from cifarkit import runtime as rt
from cifarkit.errors import UserError
from Original_version_model import build_model
from conftest import run_script

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def backend_flags():
    """init_runtime sets process-wide cuDNN and matmul flags for a CUDA runtime: put them
    back after the test, as it found them."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved


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


# DataParallel's replicas compute in the precision the results record

def dtypes_in_a_replica_thread(model, inputs, device_type, dtype):
    """The output dtypes of every conv and linear layer of ``model`` when it runs as one of
    DataParallel's replicas: the caller is under autocast in ``dtype`` (train_epoch), and
    parallel_apply's worker thread re-enters autocast with the caller's on/off switch only."""
    layers = [layer for layer in rt.unwrap(model).modules()
              if isinstance(layer, (nn.Conv2d, nn.Linear))]
    seen = set()
    hooks = [layer.register_forward_hook(lambda layer, args, output: seen.add(output.dtype))
             for layer in layers]

    def replica():
        with torch.autocast(device_type, enabled=enabled):
            model(inputs)

    try:
        with torch.autocast(device_type, dtype=dtype):
            enabled = torch.is_autocast_enabled(device_type)
            thread = threading.Thread(target=replica)
            thread.start()
            thread.join()
    finally:
        for hook in hooks:
            hook.remove()
    assert seen, "the replica thread did not run the model"
    return seen


def test_dataparallel_replicas_compute_in_the_recorded_dtype(monkeypatch):
    # On CUDA a new thread's autocast dtype defaults to fp16, and the kit records bf16; on
    # the CPU the default is bf16, so the same fault shows when fp16 is the recorded dtype.
    recorded = torch.float16
    assert torch.get_autocast_dtype("cpu") != recorded
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # no CUDA: nn.DataParallel keeps the module and calls it directly, which lets its
    # wrapping run here; the thread below stands in for its replica threads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    inputs = torch.randn(4, 3, 32, 32)

    torch.manual_seed(0)
    bare = build_model({})
    # the fault itself: a replica thread does not inherit the caller's autocast dtype
    assert dtypes_in_a_replica_thread(bare, inputs, "cpu", recorded) == {
        torch.get_autocast_dtype("cpu")}

    runtime = rt.Runtime(torch.device("cpu"), data_parallel=True, amp_dtype=recorded)
    placed = rt.place_model(bare, runtime)
    assert isinstance(placed, nn.DataParallel)
    assert dtypes_in_a_replica_thread(placed, inputs, "cpu", recorded) == {recorded}
    # what gets saved is still the bare model, without any prefix
    assert rt.unwrap(placed) is bare
    assert list(rt.unwrap(placed).state_dict()) == list(build_model({}).state_dict())


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


FP16_RUN = {"num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 4, "dropout": 0.5}


def run_in_fp16_on_the_cpu(data_dir, out, monkeypatch):
    """The Dropout script on the CPU in fp16 with loss scaling, as on a GPU below compute
    capability 8.0. The scaler starts low and grows every 2 steps, so its scale surely
    moves (up, and down again after an overflow) within an epoch."""
    real_init_runtime = rt.init_runtime

    def fp16_runtime(*args, **kwargs):
        runtime = real_init_runtime(*args, **kwargs)
        runtime.amp_dtype = torch.float16
        return runtime

    monkeypatch.setattr(rt, "init_runtime", fp16_runtime)
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(
        torch.amp.GradScaler, init_scale=2.0**10, growth_interval=2))
    status = run_script("Dropout_regularization", out, data_dir, [FP16_RUN], monkeypatch,
                        "--amp", "on")
    return status, out / "config_1.pth"


def test_fp16_run_resumes_at_the_saved_loss_scale(pickled_data, tmp_path, monkeypatch):
    status, weights = run_in_fp16_on_the_cpu(pickled_data, tmp_path / "whole", monkeypatch)
    assert status == 0
    uninterrupted = torch.load(weights, weights_only=True)

    real_save, real_restore = checkpoints.save_checkpoint, checkpoints.restore
    saved, resumed = {}, {}

    def save_then_interrupt(path, *args, **kwargs):  # as Ctrl-C during epoch 1's save
        real_save(path, *args, **kwargs)
        saved.update(torch.load(path, weights_only=True))
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_interrupt)
    status, weights = run_in_fp16_on_the_cpu(pickled_data, tmp_path / "resumed", monkeypatch)
    assert status == 130 and not weights.exists()
    assert saved["progress"]["epoch"] == 1
    assert saved["scaler"]["scale"] != 2.0**10  # the scale moved in epoch 1

    def restore_and_look(checkpoint, training, *args, **kwargs):
        restored = real_restore(checkpoint, training, *args, **kwargs)
        resumed["scale"] = training.scaler.get_scale()
        return restored

    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    monkeypatch.setattr(checkpoints, "restore", restore_and_look)
    status, weights = run_in_fp16_on_the_cpu(pickled_data, tmp_path / "resumed", monkeypatch)
    assert status == 0
    assert resumed["scale"] == saved["scaler"]["scale"]
    resumed_weights = torch.load(weights, weights_only=True)
    assert all(torch.equal(resumed_weights[key], uninterrupted[key]) for key in uninterrupted)


# Resuming with fewer GPUs than at the save

def fake_cuda_generators(monkeypatch, count):
    """``count`` GPUs whose CUDA generators take states by index, failing past the last one
    as torch.cuda.default_generators[index] does; returns {index: state} as set."""
    restored = {}

    def set_rng_state(state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= count:
            raise IndexError("tuple index out of range")
        restored[index] = state

    def set_rng_state_all(states):
        for index, state in enumerate(states):
            set_rng_state(state, index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    return restored


@pytest.mark.parametrize("gpus_now", [2, 1, 0])
def test_a_run_saved_on_4_gpus_resumes_on_fewer(gpus_now, tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = checkpoints.rng_state()
    state["cuda"] = [torch.full((16,), gpu, dtype=torch.uint8) for gpu in range(4)]
    expected_draw = torch.rand(3)  # what the CPU generator gives right after the save
    path = tmp_path / "run.ckpt"
    training = SimpleNamespace(model=model, optimizer=optimizer, scheduler=None, scaler=None,
                               progress={"epoch": 1})
    checkpoints.save_checkpoint(path, {}, training, [state])
    restored = fake_cuda_generators(monkeypatch, gpus_now)

    progress, note = checkpoints.restore(checkpoints.load_checkpoint(path), training)
    assert progress == {"epoch": 1}
    assert sorted(restored) == list(range(gpus_now))
    assert all(torch.equal(restored[gpu], state["cuda"][gpu]) for gpu in restored)
    assert torch.equal(torch.rand(3), expected_draw)
    assert "saved with 4 GPU(s) visible, resumed with" in note
    assert "no longer guaranteed bit-identical" in note
    assert "\n" not in note


def test_a_resume_on_as_many_gpus_restores_all_without_a_note(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = checkpoints.rng_state()
    state["cuda"] = [torch.full((16,), gpu, dtype=torch.uint8) for gpu in range(2)]
    path = tmp_path / "run.ckpt"
    training = SimpleNamespace(model=model, optimizer=optimizer, scheduler=None, scaler=None,
                               progress={"epoch": 1})
    checkpoints.save_checkpoint(path, {}, training, [state])
    restored = fake_cuda_generators(monkeypatch, 2)
    _, note = checkpoints.restore(checkpoints.load_checkpoint(path), training)
    assert sorted(restored) == [0, 1] and note is None


# torchrun --device auto with fewer GPUs than processes on the machine

def test_torchrun_auto_with_fewer_gpus_than_processes_is_refused(monkeypatch):
    fake_gpus(monkeypatch, [(8, 0), (8, 0)])
    for name, value in zip(TORCHRUN_VARIABLES, ("0", "4", "0", "4")):
        monkeypatch.setenv(name, value)

    def no_process_group(*args, **kwargs):
        raise AssertionError("refused only after starting a process group")

    monkeypatch.setattr(torch.distributed, "TCPStore", no_process_group)
    monkeypatch.setattr(torch.distributed, "init_process_group", no_process_group)
    with pytest.raises(UserError) as refused:
        rt.init_runtime("auto")
    message = str(refused.value)
    assert "4 processes on this machine" in message and "only 2 GPU(s)" in message
    assert "--nproc-per-node=2" in message and "--device cpu" in message


@pytest.mark.parametrize("requested, processes, gpus, device", [
    ("auto", 2, 0, "cpu"),    # no GPU: CPU processes, as --device auto promises
    ("auto", 2, 2, "cuda"),
    ("auto", 2, 8, "cuda"),
    ("cpu", 4, 8, "cpu"),     # CPU processes asked for on purpose
    ("cuda", 4, 4, "cuda"),
])
def test_torchrun_device_choice(requested, processes, gpus, device):
    assert rt.torchrun_device(requested, processes, gpus) == device


# --amp off is IEEE fp32 on CUDA, and recorded as what ran

def test_the_gpu_checks_switches_fix_cudnn_kernels_and_force_fp16(monkeypatch, backend_flags):
    """gpu_check's switches (not user flags): deterministic cuDNN for its resume check, fp16
    with loss scaling on a GPU that has bf16 for its fp16-scaler check. Unset: autotuned
    kernels and bf16."""
    fake_gpus(monkeypatch, [(9, 0)])
    runtime = rt.init_runtime("cuda")
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert rt.precision(runtime) == "bf16 autocast"
    monkeypatch.setenv(rt.DETERMINISTIC, "1")
    monkeypatch.setenv(rt.FORCE_FP16, "1")
    runtime = rt.init_runtime("cuda")
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert rt.precision(runtime) == "fp16 autocast with loss scaling"


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


# --compile with DataParallel

def test_compile_with_dataparallel_is_refused(monkeypatch, backend_flags):
    fake_gpus(monkeypatch, [(8, 0), (8, 0)])
    with pytest.raises(UserError) as refused:
        rt.init_runtime("cuda", data_parallel=True, compile=True)
    assert "--compile with nn.DataParallel over 2 GPUs" in str(refused.value)
    assert "torchrun --nproc-per-node=2" in str(refused.value)
    # each alone is fine: compile on one GPU, DataParallel uncompiled
    assert rt.init_runtime("cuda", compile=True).compile
    assert rt.init_runtime("cuda", data_parallel=True).data_parallel


def test_compile_with_dataparallel_on_one_gpu_compiles(monkeypatch, backend_flags):
    fake_gpus(monkeypatch, [(8, 0)])  # DataParallel over one GPU is not used at all
    runtime = rt.init_runtime("cuda", data_parallel=True, compile=True)
    assert runtime.compile and not runtime.data_parallel


# fused SGD beside a GradScaler

def test_fp16_training_survives_a_skipped_first_step():
    """fp16 on a GPU: GradScaler skips the first step when the gradients overflow, which is
    common at its first scale; the step after it must train as plain SGD would."""
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    reference = nn.Linear(8, 2)
    reference.load_state_dict(model.state_dict())
    config = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    # the optimizer the kit makes for an fp16 CUDA run (its parameters may sit on the CPU)
    optimizer = train.make_optimizer(
        model, config, rt.Runtime(torch.device("cuda"), amp_dtype=torch.float16))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    inputs = torch.randn(16, 8)

    scaler.scale(model(inputs).sum() * float("inf")).backward()  # overflows: skipped
    # freed memory of the parameters' sizes, full of junk, as a long-running process has:
    # whatever the step allocates without writing shows up as junk, not as lucky zeros
    junk = [torch.full_like(parameter, 1e30) for parameter in model.parameters()]
    del junk
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(ours, theirs)
               for ours, theirs in zip(model.parameters(), reference.parameters()))
    # a skipped step is no step: no momentum yet, as plain SGD would have
    assert all(optimizer.state[parameter].get("momentum_buffer") is None
               for parameter in model.parameters())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(model(inputs).pow(2).mean()).backward()
    scaler.step(optimizer)
    scaler.update()

    plain = torch.optim.SGD(reference.parameters(), **config)
    reference(inputs).pow(2).mean().backward()
    plain.step()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("saved_by, resumed_by", [
    (torch.float16, None),   # an fp16 run's unfused SGD resumed in fp32 (the CPU): fused again
    (None, torch.float16),   # a fused run's state resumed beside a GradScaler: stays unfused
])
def test_a_resumed_optimizer_keeps_the_kernel_chosen_for_this_run(saved_by, resumed_by,
                                                                  tmp_path):
    """optimizer.load_state_dict brings back the saved run's fused flag; the kit keeps the
    kernel make_optimizer chose for this run's device and precision (never the fused one
    beside a GradScaler, whose skipped steps it mishandles)."""
    config = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    saved_model, model = nn.Linear(4, 2), nn.Linear(4, 2)
    saved = train.make_optimizer(saved_model, config,
                                 rt.Runtime(torch.device("cpu"), amp_dtype=saved_by))
    saved_model(torch.randn(3, 4)).sum().backward()
    saved.step()
    path = tmp_path / "checkpoint.pt"
    checkpoints.save_checkpoint(path, {}, SimpleNamespace(
        model=saved_model, optimizer=saved, scheduler=None, scaler=None,
        progress=train.new_progress()), [checkpoints.rng_state()])
    optimizer = train.make_optimizer(model, config,
                                     rt.Runtime(torch.device("cpu"), amp_dtype=resumed_by))
    chosen = optimizer.param_groups[0]["fused"]
    assert bool(chosen) is (resumed_by != torch.float16)
    checkpoints.restore(checkpoints.load_checkpoint(path), SimpleNamespace(
        model=model, optimizer=optimizer, scheduler=None, scaler=None))
    assert optimizer.param_groups[0]["fused"] is chosen
    assert optimizer.state[next(iter(model.parameters()))]["momentum_buffer"] is not None


def test_a_first_step_skipped_by_the_loss_scaler_warns_nothing(monkeypatch):
    """fp16's loss scaler skips a step whose scaled gradients overflow, as it may on the very
    first while it finds its scale; with a one-cycle schedule, torch would then warn that
    the schedule stepped before the optimizer. The run says nothing of it, and the schedule
    still counts the step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    config = {"num_epochs": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
              "schedule": "onecycle", "batch_size": 8}
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(
        torch.amp.GradScaler, init_scale=2.0 ** 127))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    # inputs up to 100: gradients above 2, times the scale 2^127, overflow fp32
    on_device = data.OnDevice(images, torch.arange(8), images[:2], torch.arange(2),
                              *data.normalizer((0.0,) * 3, (0.01,) * 3, device="cpu"))
    before = model[1].weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training = train.fit(model, config, on_device,
                             rt.Runtime(torch.device("cpu"), amp_dtype=torch.float16))
    assert torch.equal(model[1].weight, before)  # the step was skipped
    assert training.scheduler.last_epoch == 1
