"""Runs the Task 3 script with the test hooks (hooks.py), under torchrun or alone.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_driver.py ARGS
    python tests/ddp_driver.py ARGS        # one process, for comparison

300 generated images at batch 8: 38 steps an epoch, so under torchrun one stop check inside
each epoch (at step 25) and one after it.

TEST_RANK_PRECISIONS=bf16,fp16: the precision each rank would pick alone, as on an A100
beside a V100 (simulated on the CPU). TEST_BATCHNORM=1: a model with BatchNorm (hooks.py),
trained twice, as config_1 and config_2 (the same values): config_2's DDP broadcasts its
buffers before each forward (DDP's default); what each DDP was told goes to
DDP_TEST_DUMP/broadcast-rank<R>. TEST_SYNC_BN=1: that model with sync_bn, one epoch (on
GPUs: tests/test_gpu.py).
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hooks  # noqa: E402  (tests/, this file's folder)
import Original_version_model_multiGPU as script  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402

script.CONFIGS = [{"num_epochs": 3, "lr": 0.01, "momentum": 0.9, "batch_size": 8}]

if os.environ.get("TEST_BATCHNORM"):
    script.build_model = lambda config: hooks.BatchNormNet()
    script.CONFIGS = [dict(script.CONFIGS[0], num_epochs=1)] * 2

    class SecondBroadcasts(rt.nn.parallel.DistributedDataParallel):
        def __init__(self, module, **kwargs):
            record = Path(os.environ["DDP_TEST_DUMP"], f"broadcast-rank{os.environ['RANK']}")
            made = record.read_text().split() if record.exists() else []
            (key,) = rt.NO_BUFFER_BROADCAST  # the word this torch uses
            kwargs[key] = kwargs[key] or len(made) == 1
            record.write_text(" ".join(made + [str(kwargs[key])]))
            super().__init__(module, **kwargs)

    rt.nn.parallel.DistributedDataParallel = SecondBroadcasts

if os.environ.get("TEST_SYNC_BN"):  # on GPUs: SyncBatchNorm runs on CUDA only
    script.build_model = lambda config: hooks.BatchNormNet()
    script.CONFIGS = [dict(script.CONFIGS[0], num_epochs=1, sync_bn=True)]

if os.environ.get("TEST_RANK_PRECISIONS"):
    OWN = [{"bf16": torch.bfloat16, "fp16": torch.float16}[name]
           for name in os.environ["TEST_RANK_PRECISIONS"].split(",")]
    rt.local_amp_dtype = lambda runtime, amp, cpu_amp: OWN[int(os.environ["RANK"])]

if __name__ == "__main__":
    hooks.install()
    hooks.run(script.main)
