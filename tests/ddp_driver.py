"""Runs the Task 3 script with the test hooks (hooks.py), under torchrun or alone.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_driver.py ARGS
    python tests/ddp_driver.py ARGS        # one process, for comparison

300 generated images at batch 8: 38 steps an epoch, so under torchrun one stop check inside
each epoch (at step 25) and one after it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hooks  # noqa: E402  (tests/, this file's folder)
import Original_version_model_multiGPU as script  # noqa: E402

script.CONFIGS = [{"num_epochs": 3, "lr": 0.01, "momentum": 0.9, "batch_size": 8}]

if __name__ == "__main__":
    hooks.install()
    hooks.run(script.main)
