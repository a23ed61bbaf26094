"""A two-config run of the Dropout script to interrupt, with the test hooks (hooks.py).

    python tests/long_run.py --data-dir DIR --out DIR --device cpu

config_1 is short (2 epochs of 10 mini-batches); config_2 has 75 mini-batches an epoch. Both
use dropout, which draws random numbers at every step, so an inexact resume would show.
LONG_RUN_MODEL=batchnorm-augmented: a model with BatchNorm instead (hooks.BatchNormNet), and
the ResNet recipe's augmentation (crops, flips and cutouts drawn at every step).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hooks  # noqa: E402  (tests/, this file's folder)
import Dropout_regularization as script  # noqa: E402

script.CONFIGS = [
    {"num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32, "dropout": 0.5},
    {"num_epochs": 4, "lr": 0.001, "momentum": 0.9, "batch_size": 4, "dropout": 0.5},
]
if os.environ.get("LONG_RUN_MODEL") == "batchnorm-augmented":  # BatchNorm's statistics and
    script.build_model = lambda config: hooks.BatchNormNet()  # the augmentation's draws
    script.CONFIGS = [dict(config, augment="reflect-crop+flip+inside-cutout")
                      for config in script.CONFIGS]

if __name__ == "__main__":
    hooks.install()
    hooks.run(script.main)
