"""The Task 3 script under torchrun with one fault injected, for tests/test_gpu.py.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/fault_driver.py ARGS

Environment: FAULT=oom            rank 1 runs out of CUDA memory (simulated) at the 3rd step
                                  of a config of the first attempt: in the forward
                                  (config_1), and after the backward's all-reduce, in
                                  the optimizer's step (config_2); timeout 20 s
             FAULT=oom_batchnorm  the same, inside the forward of a model with BatchNorm
                                  (after DDP would broadcast its buffers), timeout 20 s
             FAULT=oom_sync_bn    the same, with sync_bn, in epoch 2 (BatchNormNet's
                                  collectives stand in for SyncBatchNorm's), timeout 20 s
             FAULT=slow_download  no --data-dir: "downloading" CIFAR-10 (a copy from
                                  FAULT_SOURCE) takes FAULT_SECONDS on whichever rank fetches
                                  it, while the process group's timeout is 4 s
             FAULT=late_rank0     rank 0 comes FAULT_SECONDS late to the start (as when its
                                  machine downloads the data), the ranks' timeout FAULT_TIMEOUT;
                                  rank 0 hosts the ranks' store (on FAULT_PORT), as without
                                  torchrun's agent store, so the others wait in the store
"""
import datetime
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hooks  # noqa: E402  (tests/, this file's folder)
import Original_version_model_multiGPU as script  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402

script.CONFIGS = [{"num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 16},
                  {"num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}]
FAULT = os.environ.get("FAULT")

if FAULT == "oom":  # a model that fails: the forward hook of rank 1's 3rd training step
    real_build, steps = script.build_model, []

    def build_model(config):
        model = real_build(config)

        def run_out(module, inputs):
            if module.training and torch.is_grad_enabled() and config["batch_size"] == 16:
                steps.append(len(inputs[0]))
                if os.environ["RANK"] == "1" and len(steps) == 3:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

        model.register_forward_pre_hook(run_out)
        return model

    script.build_model = build_model

if FAULT == "oom":  # and in a config of its own, after the backward: in the optimizer's
    # step, rank 1's 3rd (its all-reduce is done); the last config trains
    script.CONFIGS.insert(1, {"num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 16})
    rt.TIMEOUTS["gloo"] = datetime.timedelta(seconds=20)  # a hang ends soon, and fails
    real_step, stepped = torch.optim.SGD.step, []

    def step(self, *args, **kwargs):
        stepped.append(self.defaults["lr"])  # config_2's optimizer: lr 0.02
        if os.environ["RANK"] == "1" and stepped[-1] == 0.02 and stepped.count(0.02) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self, *args, **kwargs)

    torch.optim.SGD.step = step

if FAULT == "slow_download":
    import torchvision

    real_init = dist.init_process_group

    def short_timeout(*args, **kwargs):
        return real_init(*args, **dict(kwargs, timeout=datetime.timedelta(seconds=4)))

    class SlowCIFAR10:
        def __init__(self, root, train, download):
            target = Path(root) / "cifar-10-batches-py"
            if not target.exists():
                time.sleep(float(os.environ["FAULT_SECONDS"]))
                shutil.copytree(Path(os.environ["FAULT_SOURCE"]) / "cifar-10-batches-py",
                                target)

    dist.init_process_group = short_timeout
    torchvision.datasets.CIFAR10 = SlowCIFAR10

if FAULT == "oom_batchnorm":
    rt.TIMEOUTS["gloo"] = datetime.timedelta(seconds=20)  # a hang ends soon, and fails
    script.build_model = lambda config: hooks.BatchNormNet(oom_at=3)

if FAULT == "oom_sync_bn":  # 300 images at batch 16: 19 steps an epoch
    rt.TIMEOUTS["gloo"] = datetime.timedelta(seconds=20)  # a hang ends soon, and fails
    script.CONFIGS[0]["sync_bn"] = True
    script.build_model = lambda config: hooks.BatchNormNet(oom_at=22, collectives=True)
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = lambda module, *args, **kwargs: module
    real_fit = rt.check_configs_fit  # which refuses sync_bn on CPU processes
    rt.check_configs_fit = lambda selected, runtime: real_fit(
        [(number, dict(chosen, sync_bn=False)) for number, chosen in selected], runtime)

if FAULT == "late_rank0":
    rt.TIMEOUTS["gloo"] = datetime.timedelta(seconds=float(os.environ["FAULT_TIMEOUT"]))
    os.environ.update(TORCHELASTIC_USE_AGENT_STORE="False", MASTER_PORT=os.environ["FAULT_PORT"])
    real_store = dist.TCPStore

    def late_store(*args, **kwargs):
        if os.environ["RANK"] == "0":
            time.sleep(float(os.environ["FAULT_SECONDS"]))
        return real_store(*args, **kwargs)

    dist.TCPStore = late_store

if __name__ == "__main__":
    sys.exit(script.main())
