"""What the layers of one training step really compute in (for tests/test_gpu.py): a hook on
every Conv2d and Linear records its output's dtype and device, and tells TF32 from fp32 by the
error against a float64 recomputation. Also what each --amp value must give, worked out apart
from runtime.py, and DataParallel made to run two replicas on one device."""
import threading
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import Original_version_model_multiGPU as script
from cifarkit import cli, config, data, train
from cifarkit import runtime as rt

# An fp32 output further than this from float64, relative to its largest value, was computed
# in TF32: fp32 kernels stay near 1e-6 (FFT or Winograd ones below 1e-5), TF32's 10-bit inputs
# give 3e-4 or more (test_gpu.py: 4e-7 and 8e-4).
TF32_THRESHOLD = 1e-4
ALLOWED = {"fp32": {"fp32"}, "bf16 autocast": {"bf16"},  # recorded precision: computed in
           "fp16 autocast with loss scaling": {"fp16"}}


def expected_precision(device_type, amp, force_fp16=False):
    """What ``--amp`` must give the Task 3 LeNet: fp32 for off, and on the CPU for auto
    (LeNet's CPU_AMP is off); else bf16 where every visible GPU has it in hardware (compute
    capability 8.0 up), fp16 with loss scaling where one lacks it or it is forced."""
    if amp == "off" or (device_type == "cpu" and amp == "auto"):
        return "fp32"
    native = device_type == "cpu" or all(torch.cuda.get_device_capability(index)[0] >= 8
                                         for index in range(torch.cuda.device_count()))
    return "bf16 autocast" if native and not force_fp16 else "fp16 autocast with loss scaling"


def record_layer(layers, name, module, inputs, output):
    """A forward hook: what one Conv2d or Linear call computed in (DataParallel's replica
    threads run it too, so the thread is recorded)."""
    with torch.no_grad(), torch.autocast(output.device.type, enabled=False):
        weight = module.weight.double()
        bias = module.bias.double() if module.bias is not None else None
        reference = (module._conv_forward(inputs[0].double(), weight, bias)
                     if isinstance(module, nn.Conv2d) else F.linear(inputs[0].double(), weight,
                                                                   bias))
        error = ((output.double() - reference).abs().max()
                 / reference.abs().max().clamp(min=1e-30)).item()
    kind = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(output.dtype, str(output.dtype))
    if output.dtype == torch.float32:
        kind = "tf32" if error > TF32_THRESHOLD else "fp32"
    thread = threading.current_thread()
    layers.append({"layer": name, "device": str(output.device), "computed_in": kind,
                   "thread": "main" if thread is threading.main_thread() else thread.name})


def one_step(data_dir, runtime, rewrap=lambda model: None):
    """The Task 3 speedrun config's LeNet placed by place_model (then changed by ``rewrap``),
    trained one step on every image of ``data_dir`` by train.fit: [every layer call]."""
    ((_, chosen),) = cli.select_configs(config.check_configs(script.CONFIGS), "speedrun")
    dataset = data.load_cifar10(data_dir)
    model, layers = script.build_model(chosen), []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):  # replicas share these hooks
            module.register_forward_hook(partial(record_layer, layers, name))
    model = rt.place_model(model, runtime)
    rewrap(model)
    images, labels = (tensor.to(runtime.device) for tensor in
                      (dataset.train_images, dataset.train_labels))
    scale, shift = data.normalizer(*script.NORMALIZATION, device=runtime.device)
    train.fit(model, dict(chosen, num_epochs=1, batch_size=len(labels)),
              data.OnDevice(images, labels, images, labels, scale, shift), runtime)
    return layers


def mismatches(label, layers, devices):
    """What is wrong with ``layers`` for a run recorded as ``label`` that should have computed
    on every device of ``devices`` (empty: nothing)."""
    if label not in ALLOWED:
        return [f"unknown precision {label!r}"]
    wrong = sorted({(layer["computed_in"], layer["device"]) for layer in layers
                    if layer["computed_in"] not in ALLOWED[label]})
    problems = [f"recorded {label!r}, but layers computed in "
                + ", ".join(f"{kind} on {device}" for kind, device in wrong)] if wrong else []
    missing = [device for device in devices if device not in {l["device"] for l in layers}]
    return problems + ([f"no Conv2d or Linear ran on {', '.join(missing)}"] if missing else [])


def two_replicas(model):
    """Make the DataParallel ``model`` run two replicas on its one device, each in a thread of
    its own as over two GPUs. On a GPU: DataParallel's own forward (scatter, parallel_apply's
    threads, gather), with the module itself as both replicas (replicate() broadcasts to
    distinct GPUs only). On the CPU, where DataParallel runs no threads: what parallel_apply
    does, each half of the batch in a new thread, autocast re-entered there by its switch."""
    if model.device_ids:
        model.device_ids = model.device_ids[:1] * 2
        model.replicate = lambda module, device_ids: [module] * len(device_ids)
        return
    module, outputs = model.module, {}

    def replica(number, images, enabled):
        with torch.autocast("cpu", enabled=enabled):
            outputs[number] = module(images)

    def forward(images):
        threads = [threading.Thread(target=replica, args=(number, half,
                                                          torch.is_autocast_enabled("cpu")))
                   for number, half in enumerate(images.chunk(2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with torch.autocast("cpu", enabled=False):
            return torch.cat([outputs.pop(0), outputs.pop(1)])

    model.forward = forward
