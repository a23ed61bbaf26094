"""GPUs: what only a CUDA GPU can show (the tests marked gpu, skipped where there is none: on
a GPU machine, python -m pytest -m gpu), and every CUDA path that can be checked on the CPU:
precision chosen from the compute capability, DataParallel's replica threads, fp16 with
loss scaling and its resume, fewer GPUs at a resume, torchrun's device choice, out of memory
and late ranks under torchrun (gloo). benchmarks/gpu_check.py: tests/test_gpu_check.py;
what the layers compute in: tests/layer_probe.py."""
import functools
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torchvision.transforms import functional as TF

from cifarkit import checkpoints, data, train
from cifarkit import runtime as rt
from cifarkit.errors import UserError
from Original_version_model import build_model
import layer_probe
from conftest import (REPO, blanked_squares, checkpoint_of, labelled_images, long_run_results,
                      run_script, start_long_run, wait_until_paused, windows_found)

# The PNGs are built, not rendered (conftest's unrendered: rendering is most of what a run
# costs here), except in the tests that ask for rendered.
pytestmark = pytest.mark.usefixtures("unrendered")


# ---- on a CUDA GPU (marked gpu: skipped where there is none, see conftest.py) ----

PRECISIONS = {"fp32": None, "bf16 autocast": torch.bfloat16,
              "fp16 autocast with loss scaling": torch.float16}


@pytest.fixture(scope="module")
def cuda_run(pickled_data, tmp_path_factory):
    """Task 3's script as a user starts it on a GPU machine: --device cuda, --amp auto,
    nn.DataParallel over every visible GPU (the GPU alone where there is one); a report
    config and the recipe (augmentation, one-cycle, TTA)."""
    out = tmp_path_factory.mktemp("cuda") / "out"
    script = importlib.import_module("Original_version_model_multiGPU")
    recipe = next(config for config in script.CONFIGS if config.get("name") == "recipe")
    with pytest.MonkeyPatch.context() as patch:  # the configs chosen by content, not position
        configs = [{"num_epochs": 2, "lr": 0.001, "momentum": 0.9, "batch_size": 32}, recipe]
        assert run_script(script, out, pickled_data, configs, patch, "--epochs", "2",
                          device="cuda") == 0
    return script, out, json.loads((out / "training_result.json").read_text())


@pytest.mark.gpu
def test_the_sweep_script_trains_on_every_visible_gpu(cuda_run):
    _, _, results = cuda_run
    gpus = torch.cuda.device_count()
    assert len(results["devices"]) == gpus
    assert all(name.startswith("cuda") for name in results["devices"])
    assert results["backend"] == ("DataParallel" if gpus > 1 else "single process")
    assert [entry["status"] for entry in results["configs"]] == ["finished", "finished"]


@pytest.mark.gpu
def test_amp_auto_on_cuda_records_mixed_precision(cuda_run):
    _, _, results = cuda_run
    bf16_in_hardware = all(torch.cuda.get_device_capability(index)[0] >= 8
                           for index in range(torch.cuda.device_count()))
    expected = "bf16 autocast" if bf16_in_hardware else "fp16 autocast with loss scaling"
    assert {entry["precision"] for entry in results["configs"]} == {expected}


@pytest.mark.gpu
def test_weights_trained_on_cuda_load_anywhere_and_rescore_to_the_recorded_accuracy(cuda_run,
                                                                                  pickled_data):
    script, out, results = cuda_run
    assert_weights_rescore(script, out, results, pickled_data)


def assert_weights_rescore(script, out, results, data_dir):
    """README's torch.load(path, weights_only=True) gives CPU tensors (so the weights load
    on a machine without a GPU too), and on the GPU, in the recorded precision, they score
    what the results say, with TTA where the config uses it."""
    dataset = data.load_cifar10(data_dir)
    one_image = 100 / len(dataset.test_labels)  # cuDNN may pick other kernels for a new model
    for entry in results["configs"]:
        weights = torch.load(out / entry["weights"], weights_only=True)
        assert {tensor.device.type for tensor in weights.values()} == {"cpu"}
        model = script.build_model(entry["config"])
        model.load_state_dict(weights)
        cuda = rt.Runtime(torch.device("cuda"), amp_dtype=PRECISIONS[entry["precision"]])
        model = rt.place_model(model, cuda)
        scale, shift = data.normalizer(*script.NORMALIZATION, device="cuda")
        predictions = train.predict(model, dataset.test_images.cuda(), scale, shift, cuda,
                                    entry["config"].get("tta", False))
        assert train.accuracy(predictions, dataset.test_labels) == pytest.approx(
            entry["final_test_accuracy"], abs=one_image)


@pytest.mark.gpu
def test_page_augmentation_runs_on_cuda_uint8_as_on_the_cpu():
    """The ResNet recipe's augmentation on CUDA, where a uint8 reflect-pad kernel is not
    needed (the mirroring is in the gather indices): every crop is a window of torchvision's
    reflect-padded image (made on the CPU), every cutout a whole 8x8 square, and the batch
    keeps its labels."""
    torch.manual_seed(0)
    batch = torch.randint(1, 256, (256, 3, 32, 32), dtype=torch.uint8)
    cropped = data.random_crop(batch.cuda(), border="reflect").cpu()
    for original, image in zip(batch, cropped):
        assert len(windows_found(TF.pad(original, [4], padding_mode="reflect"), image)) == 1
    blanked = data.cutout(torch.ones(256, 3, 32, 32, device="cuda"), placement="inside")
    assert {(height, width) for _, _, height, width in blanked_squares(blanked.cpu())} == {(8, 8)}

    images, labels = labelled_images(64)
    order = torch.randperm(len(labels), device="cuda")
    identity = (torch.ones(1, 3, 1, 1, device="cuda"), torch.zeros(1, 3, 1, 1, device="cuda"))
    out, out_labels = data.prepare_batch(images.cuda(), labels.cuda(), order, *identity,
                                         augment="reflect-crop+flip+inside-cutout")
    assert out.is_cuda
    assert torch.equal(out_labels.cpu(), labels[order.cpu()])
    for image, label in zip(out.cpu(), out_labels.cpu()):
        assert set(image.unique().tolist()) == {0.0, float(label * 20 + 20)}
        assert (image == 0).sum().item() == 3 * 8 * 8


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["dropout", "batchnorm-augmented"])
@pytest.mark.parametrize("precision", [{}, {rt.FORCE_FP16: "1"}], ids=["amp-auto", "fp16-scaler"])
def test_resume_after_sigterm_on_cuda_ends_bit_for_bit_as_an_uninterrupted_run(
        pickled_data, tmp_path, precision, model):
    """Stopped mid-epoch on the GPU and resumed by the same command, in the GPU's own mixed
    precision and in fp16 with its loss scaler: with cuDNN's deterministic kernels the run
    ends bit for bit as one never interrupted. The Dropout script (the CUDA generator's
    state, dropout's masks, is in the checkpoint; and the scaler's state), and a BatchNorm
    model with augmentation (its running statistics, the crops' and cutouts' generator).
    tests/test_resume_and_signals.py's CPU tests, on CUDA."""
    env = dict(precision, **{rt.DETERMINISTIC: "1", "LONG_RUN_MODEL": model})
    reference = start_long_run(pickled_data, tmp_path / "reference" / "out", device="cuda",
                               env=env)
    _, stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, stderr[-3000:]

    out = tmp_path / "resumed" / "out"
    out.parent.mkdir()
    stopped = start_long_run(pickled_data, out, pause_at=(2, 2, 30), device="cuda", env=env)
    wait_until_paused(stopped, out)
    stopped.send_signal(signal.SIGTERM)
    _, stderr = stopped.communicate(timeout=300)
    assert stopped.returncode == 143, stderr[-3000:]
    checkpoint = torch.load(checkpoint_of(out, "config_2"), weights_only=True)
    assert (checkpoint["progress"]["epoch"], checkpoint["progress"]["step"]) == (1, 30)
    assert len(checkpoint["rng"][0]["cuda"]) >= 1  # the GPU's generator, for dropout

    rerun = start_long_run(pickled_data, out, device="cuda", env=env)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert "config_2: resuming from its checkpoint after epoch 1, step 30" in stdout
    resumed = long_run_results(out)
    uninterrupted = long_run_results(tmp_path / "reference" / "out")
    assert resumed.keys() == uninterrupted.keys() == {"config_1", "config_2"}
    for run_id, (status, history, weights) in resumed.items():
        _, expected_history, expected_weights = uninterrupted[run_id]
        assert status == "finished"
        assert history == expected_history, run_id
        assert all(torch.equal(weights[key], expected_weights[key]) for key in weights), run_id
    precisions = {json.loads((out / "training_result.json").read_text())["configs"][0][
        "precision"]}
    assert precisions <= ({"fp16 autocast with loss scaling"} if precision else
                          {"bf16 autocast", "fp16 autocast with loss scaling"})


AMPS = {"auto": {}, "on": {}, "off": {}, "fp16-forced": {rt.FORCE_FP16: "1"}}


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.gpu), "cpu"])
@pytest.mark.parametrize("amp", AMPS)
def test_each_amp_value_gives_the_precision_this_machine_calls_for_in_every_layer(
        pickled_data, monkeypatch, backend_flags, device, amp):
    """--amp off is IEEE fp32 (no TF32); auto and on bf16 where every visible GPU has it in
    hardware, else fp16 with loss scaling (forced: the path of a V100 or T4). What runtime.py
    chose, and what every Conv2d and Linear of a training step computed in, on every GPU of
    DataParallel, each against what this machine calls for (layer_probe, apart from
    runtime.py). On the CPU: LeNet's auto is fp32, on is bf16."""
    for name, value in AMPS[amp].items():
        monkeypatch.setenv(name, value)
    flag = amp.replace("fp16-forced", "on")
    runtime = rt.init_runtime(device, data_parallel=True, amp=flag)
    expected = layer_probe.expected_precision(device, flag, force_fp16=bool(AMPS[amp]))
    assert rt.precision(runtime) == expected
    gpus = [f"cuda:{index}" for index in range(torch.cuda.device_count())] \
        if device == "cuda" else ["cpu"]
    assert layer_probe.mismatches(expected, layer_probe.one_step(pickled_data, runtime),
                                  gpus) == []


@pytest.mark.parametrize("amp", ["auto", "on"])
def test_a_precision_the_runtime_chose_wrong_fails_the_probe_though_it_is_recorded_right(
        pickled_data, monkeypatch, amp):
    """Broken on purpose: runtime.py picks the wrong dtype for --amp (off silently training in
    bf16 would have passed a check of the record against the layers alone)."""
    wrong = None if amp == "on" else torch.bfloat16
    monkeypatch.setattr(rt, "local_amp_dtype", lambda *args: wrong)
    runtime = rt.init_runtime("cpu", amp=amp)
    layers = layer_probe.one_step(pickled_data, runtime)
    assert layer_probe.mismatches(rt.precision(runtime), layers, ["cpu"]) == []  # consistent,
    assert rt.precision(runtime) != layer_probe.expected_precision("cpu", amp)  # and wrong


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.gpu), "cpu"])
def test_dataparallel_replica_threads_compute_in_the_recorded_dtype(pickled_data, backend_flags,
                                                                    monkeypatch, device):
    """DataParallel runs each replica in a thread of its own, where autocast's dtype is the
    default (fp16 on CUDA), not the run's: two replicas on one device (layer_probe), so one GPU
    checks it. On the CPU, with fp16 recorded (the CPU's default is bf16), and without
    runtime.Autocast around the model (broken on purpose), the replicas compute in bf16."""
    runtime = rt.init_runtime(device, amp="on")
    runtime.data_parallel = True  # one device: place_model wraps as over several GPUs
    if device == "cpu":
        runtime.amp_dtype = torch.float16
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine too
    label = rt.precision(runtime)
    layers = layer_probe.one_step(pickled_data, runtime, layer_probe.two_replicas)
    assert len({layer["thread"] for layer in layers} - {"main"}) == 2
    assert layer_probe.mismatches(label, layers, []) == []
    if device == "cpu":
        class Forgetful(rt.Autocast):  # what place_model would be without the wrapper
            def forward(self, *args, **kwargs):
                return self.module(*args, **kwargs)

        monkeypatch.setattr(rt, "Autocast", Forgetful)
        layers = layer_probe.one_step(pickled_data, runtime, layer_probe.two_replicas)
        assert layer_probe.mismatches(label, layers, []) == [
            "recorded 'fp16 autocast with loss scaling', but layers computed in bf16 on cpu"]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_dataparallel_over_every_gpu_replicates_the_model_and_trains_in_the_recorded_dtype(
        pickled_data, backend_flags):
    """DataParallel's own replicate() (a broadcast to distinct GPUs), not patched: every GPU
    computes, in a replica thread, in the recorded precision, and the step updates the one
    model that is saved."""
    runtime = rt.init_runtime("cuda", data_parallel=True, amp="auto")
    layers = layer_probe.one_step(pickled_data, runtime)
    gpus = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    assert layer_probe.mismatches(rt.precision(runtime), layers, gpus) == []
    assert {layer["thread"] for layer in layers} != {"main"}


@pytest.mark.gpu
@pytest.mark.parametrize("launch", ["two-on-one-gpu", "nccl-one-per-gpu"])
def test_torchrun_with_sync_bn_and_compile_ends_with_the_same_weights_on_every_rank(
        pickled_data, tmp_path, launch):
    """DDP with SyncBatchNorm and --compile: two processes sharing GPU 0 over gloo (NCCL
    refuses two ranks on one GPU; rt.SHARE_GPU), and one process per GPU over NCCL (world
    size 1 on a machine with one GPU). The run finishes, says what it ran on, and every rank
    ends with the same weights and BatchNorm statistics."""
    shared = launch == "two-on-one-gpu"
    processes = 2 if shared else torch.cuda.device_count()
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={processes}", str(REPO / "tests" / "ddp_driver.py"), "--data-dir",
         str(pickled_data), "--out", str(out), "--device", "cuda", "--compile"], cwd=REPO,
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TEST_SYNC_BN="1", DDP_TEST_DUMP=str(dump),
                 **({rt.SHARE_GPU: "1"} if shared else {})))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "training_result.json").read_text())
    assert (results["world_size"], results["backend"]) == (processes,
                                                           "gloo" if shared else "nccl")
    (entry,) = results["configs"]
    assert entry["status"] == "finished" and entry["compiled"] and entry["config"]["sync_bn"]
    ranks = [torch.load(dump / f"rank{rank}.pth", weights_only=True) for rank in range(processes)]
    assert any("running_mean" in key for key in ranks[0])
    assert all(torch.equal(ranks[0][key], other[key]) for other in ranks[1:] for key in ranks[0])


@pytest.mark.gpu
@pytest.mark.parametrize("script", ["Original_version_model", "L2_regularization",
                                    "Dropout_regularization", "Resnet_model"])
def test_each_script_trains_on_the_gpu_and_its_weights_rescore_there(script, pickled_data,
                                                                     tmp_path, monkeypatch):
    """Its first config, one epoch: finished, the PNGs, and weights that load as CPU tensors
    (README's line, so they load without a GPU) and score on the GPU what the results say.
    The Task 3 script: cuda_run's tests above."""
    module = importlib.import_module(script)
    out = tmp_path / "out"
    assert run_script(module, out, pickled_data, [dict(module.CONFIGS[0], num_epochs=1)],
                      monkeypatch, device="cuda") == 0
    (results_file,) = out.glob("*.json")
    results = json.loads(results_file.read_text())
    assert [entry["status"] for entry in results["configs"]] == ["finished"]
    assert all((out / name).is_file() for name in ("loss.png", "test_accuracy.png"))
    assert_weights_rescore(module, out, results, pickled_data)


# ---- the CUDA paths, checked on the CPU ----
# GPUs are faked with monkeypatch where the logic only asks torch what hardware there is, and
# DataParallel's per-replica threads are reproduced with a plain thread, which is what
# torch.nn.parallel.parallel_apply starts for each GPU.

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


def fake_gpus(monkeypatch, capabilities, archs=("sm_70", "sm_75", "sm_80", "sm_86", "sm_90")):
    """Make torch report one GPU per (major, minor) compute capability, as on a machine that
    has them, with a torch build that has kernels for ``archs`` (by default one that still
    serves the V100); is_bf16_supported says yes everywhere, as it does on V100 and T4."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2")
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
    DataParallel's replicas: the caller is under autocast in ``dtype`` (train.train_config), and
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


def test_a_gpu_this_torch_has_no_kernels_for_is_refused_before_training(monkeypatch,
                                                                        backend_flags):
    """pip's torch 2.14 has kernels for sm_75 and newer: a V100 (7.0) would warn, then fail at
    its first kernel. Refused up front, naming the GPU and the build; a 7.5 GPU (a T4), and an
    8.6 one beside sm_80 kernels, run."""
    build = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    fake_gpus(monkeypatch, [(7, 0)], archs=build)
    with pytest.raises(UserError, match=r"Tesla V100-SXM2 \(compute capability 7\.0\) has no "
                                        r"kernels in this torch build .*sm_75, sm_80"):
        rt.init_runtime("cuda", amp="auto")
    fake_gpus(monkeypatch, [(7, 5)], archs=build)
    assert rt.init_runtime("cuda", amp="auto").amp_dtype == torch.float16
    fake_gpus(monkeypatch, [(8, 9)], archs=["sm_80"])
    assert rt.init_runtime("cuda", amp="auto").amp_dtype == torch.bfloat16


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


def test_the_gpu_tests_torchrun_shares_one_gpu_between_its_processes_over_gloo(monkeypatch):
    """rt.SHARE_GPU (the GPU tests' switch): 4 processes on a machine with 2 GPUs are not
    refused; local rank 3 takes cuda:1, and the backend is gloo (NCCL refuses two ranks on
    one GPU), bound to no device."""
    fake_gpus(monkeypatch, [(8, 0), (8, 0)])
    for name, value in zip(TORCHRUN_VARIABLES, ("3", "4", "3", "4")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(rt.SHARE_GPU, "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    seen = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.update(device=device))
    monkeypatch.setattr(torch.distributed, "TCPStore", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.distributed, "PrefixStore", lambda *args, **kwargs: None)

    def process_group(backend, **kwargs):
        seen.update(backend=backend, device_id=kwargs["device_id"])
        raise KeyboardInterrupt  # far enough

    monkeypatch.setattr(torch.distributed, "init_process_group", process_group)
    with pytest.raises(KeyboardInterrupt):
        rt.init_runtime("cuda")
    assert seen == {"device": torch.device("cuda:1"), "backend": "gloo", "device_id": None}


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

def test_the_gpu_tests_switches_fix_cudnn_kernels_and_force_fp16(monkeypatch, backend_flags):
    """The GPU tests' switches (not user flags): deterministic cuDNN for the resume tests, fp16
    with loss scaling on a GPU that has bf16 (a V100's or T4's path). Unset: autotuned kernels
    and bf16."""
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


# ---- GPU faults under torchrun, injected on the CPU (gloo) ----
# Out of memory on one rank, a slow first download, a late rank: each ends the same way on
# every rank, quickly, with nothing lost.

DRIVER = REPO / "tests" / "fault_driver.py"


def torchrun(fault, *script_args, cwd=REPO, **env):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(DRIVER), "--device", "cpu", *map(str, script_args)]
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", FAULT=fault, **env))
    return result, time.monotonic() - started


def test_out_of_memory_on_one_rank_stops_that_config_on_both_and_the_next_trains(
        pickled_data, tmp_path):
    """Before the forward (config_1), or after the backward (config_2: fused SGD allocates
    its momentum in the first step): the failed rank keeps the others company until they
    agree to stop, with as many all-reduces as they make (one too many: a hang until the
    timeout), and config_3 trains."""
    out = tmp_path / "out"
    result, _ = torchrun("oom", "--data-dir", pickled_data, "--out", out)
    assert result.returncode == 1, result.stderr[-3000:]  # a config ran out of memory
    for config_id in ("config_1", "config_2"):
        assert f"{config_id} ran out of GPU memory at batch_size 16" in result.stderr
    assert "[rank0]: Traceback" not in result.stderr  # torchrun's own report of status 1
    assert "[rank1]: Traceback" not in result.stderr  # is all the traceback there is
    entries = {entry["id"]: entry for entry in
               json.loads((out / "training_result.json").read_text())["configs"]}
    assert [entries[config_id]["status"] for config_id in ("config_1", "config_2", "config_3")
            ] == ["out_of_memory", "out_of_memory", "finished"]
    assert (out / "config_3.pth").exists() and not (out / "config_1.pth").exists()


def test_out_of_memory_inside_the_forward_of_a_batchnorm_model_stops_both_ranks_at_once(
        pickled_data, tmp_path):
    """DDP would broadcast BatchNorm's buffers before each forward: an out-of-memory error in
    the forward on one rank, and its recovery step, put the ranks' collectives out of step
    (a hang until the timeout, 20 s here, then a lost job). Both ranks stop that config and
    train the next."""
    out = tmp_path / "out"
    result, _ = torchrun("oom_batchnorm", "--data-dir", pickled_data, "--out", out)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "config_1 ran out of GPU memory at batch_size 16" in result.stderr
    entries = {entry["id"]: entry for entry in
               json.loads((out / "training_result.json").read_text())["configs"]}
    assert entries["config_1"]["status"] == "out_of_memory"
    assert entries["config_2"]["status"] == "finished"


def test_out_of_memory_inside_a_forward_with_sync_bn_ends_the_run_at_once_keeping_the_checkpoint(
        pickled_data, tmp_path):
    """SyncBatchNorm all-reduces inside the forward: after an out-of-memory error there, no
    step of the failed rank can meet the collective the others wait in. That rank says so
    and leaves at once; the others lose contact and stop; the last epoch's checkpoint stays
    for a rerun. (Before: collectives out of step, a hang until the timeout.)"""
    out = tmp_path / "out"
    result, seconds = torchrun("oom_sync_bn", "--data-dir", pickled_data, "--out", out)
    assert result.returncode == 1, result.stderr[-3000:]
    assert ("config_1 ran out of GPU memory at batch_size 16 inside a forward with "
            "SyncBatchNorm (sync_bn)") in result.stderr
    assert "rank 0 lost contact with the other ranks" in result.stderr
    assert seconds < 20  # no wait for the process group's timeout
    (entry,) = json.loads((out / "training_result.json").read_text())["configs"]
    assert entry["status"] == "running" and len(entry["history"]) == 1
    assert checkpoint_of(out).exists()


def test_a_download_slower_than_the_process_group_timeout_does_not_kill_the_job(
        pickled_data, tmp_path):
    """Every rank fetches (or finds) the data before the ranks wait on each other."""
    result, seconds = torchrun("slow_download", "--epochs", "1", "--out", tmp_path / "out",
                               cwd=tmp_path, FAULT_SOURCE=str(pickled_data), FAULT_SECONDS="6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "config_1.pth").exists()
    assert (tmp_path / "data" / "cifar-10-batches-py").is_dir()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_the_ranks_wait_for_a_late_rank_as_long_as_the_timeout_says(pickled_data, tmp_path):
    """Where the ranks find each other (the store, here hosted by rank 0) they wait as long
    as the process group's timeout, not the store's own 5 minutes: a rank 0 later than that
    timeout (its machine downloading the data) makes the others stop with one message at
    the timeout (with the store's own, rank 1 would have waited for it, and trained)."""
    too_late, seconds = torchrun("late_rank0", "--data-dir", pickled_data, "--out",
                                 tmp_path / "too-late", FAULT_SECONDS="40", FAULT_TIMEOUT="3",
                                 FAULT_PORT=free_port())
    assert too_late.returncode != 0
    assert "error: rank 1 waited 0:00:03 for the other ranks to start" in too_late.stderr
    assert seconds < 40  # rank 1 gave up at its timeout; rank 0 then never started training


def test_compile_keeps_static_graphs_past_the_smaller_last_batch(monkeypatch):
    """--compile: an epoch's smaller last batch gets a static graph of its own; the full
    batches of the next epoch keep theirs instead of being recompiled with dynamic shapes."""
    graphs, real_compile = [], torch.compile

    def recorder(graph, example_inputs):  # a backend that notes each graph's input shapes
        graphs.append([tuple(node.meta["example_value"].shape) for node in graph.graph.nodes
                       if node.op == "placeholder"
                       and isinstance(node.meta.get("example_value"), torch.Tensor)])
        return graph.forward

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(
        model, backend=recorder, **kwargs))
    torch._dynamo.reset()
    runtime = rt.Runtime(torch.device("cpu"), compile=True)
    model = rt.place_model(build_model({}), runtime)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)  # batches 8, 8, 4
    on_device = data.OnDevice(images, torch.arange(20) % 10, images[:4], torch.arange(4),
                              *data.normalizer((0.5,) * 3, (0.5,) * 3, device="cpu"))
    train.fit(model, {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 8,
                      "num_epochs": 2}, on_device, runtime)
    shapes = [shape for graph in graphs for shape in graph]
    assert shapes and all(isinstance(size, int) for shape in shapes for size in shape), shapes
    torch._dynamo.reset()


# ---- Apple silicon (MPS): not run on a Mac; its decisions, with MPS mocked available ----

def test_device_mps_where_there_is_none_is_one_line(pickled_data, tmp_path, monkeypatch,
                                                   capsys):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert run_script("Original_version_model", tmp_path / "out", pickled_data, None, None,
                      device="mps") == 2
    error = capsys.readouterr().err
    assert "--device mps: Apple's GPU (MPS) is not available here" in error
    assert "Traceback" not in error and not (tmp_path / "out").exists()


@pytest.mark.parametrize("requested", ["mps", "auto"])
def test_with_mps_available_a_mac_trains_on_it_in_fp32_without_dataparallel(
        requested, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: True)  # the CPU's; not the GPU's
    runtime = rt.init_runtime(requested, data_parallel=True, amp="auto", cpu_amp=True)
    assert (runtime.device.type, runtime.data_parallel) == ("mps", False)
    assert runtime.amp_dtype is None and rt.precision(runtime) == "fp32"
    assert rt.device_names(runtime) == ["mps (Apple GPU)"]
    assert train.SYNC_EVERY[runtime.device.type] == 100
    assert train.make_optimizer(nn.Linear(2, 2), {"lr": 0.1, "momentum": 0.9,
                                                   "weight_decay": 0.0}, runtime).defaults[
        "fused"] is False  # torch's fused SGD: CPU and CUDA
    with pytest.raises(UserError, match="--amp on with --device mps: the kit trains in fp32"):
        rt.init_runtime(requested, amp="on")
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)  # as torchrun starts its processes
    if requested == "mps":
        with pytest.raises(UserError, match="--device mps under torchrun"):
            rt.init_runtime(requested)


def test_on_mps_the_epoch_sums_are_float32_and_a_cpu_checkpoints_sums_follow(monkeypatch):
    """MPS has no float64; a run stopped on a CPU and resumed on a Mac carries its sums over
    in float32 there (kept on the CPU here: only the dtypes are the question)."""
    mps = SimpleNamespace(type="mps")
    real_zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *args, **kwargs: real_zeros(
        *args, **dict(kwargs, device="cpu")))
    sums = train.new_sums(mps)
    assert sums["loss"].dtype == torch.float32 and sums["correct"].dtype == torch.int64
    saved = train.new_sums(torch.device("cpu"))  # float64, as a CPU checkpoint holds them
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, dtype=None: real_to(
        self, "cpu", dtype))
    resumed = train.new_sums(mps, saved)
    assert resumed["loss"].dtype == torch.float32 and resumed["correct"].dtype == torch.int64
