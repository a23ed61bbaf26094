"""Task 2: LeNet with L2 regularisation (SGD weight decay), beside an unregularised control.

    python L2_regularization.py
    python L2_regularization.py --data-dir DIR --epochs 10

The report's L2 run (50 epochs, lr 0.001, momentum 0.95, weight decay 1e-4) next to the same
run without weight decay, so the effect on the train-test gap shows in the plots. Writes
config_N.pth, training_result.json and the PNGs into modelset/L2_regularization_model/.
"""
import sys

import torch.nn.functional as F
from torch import nn

from cifarkit import data, train

CONFIGS = [
    {
        "name": "control",
        "num_epochs": 50,
        "lr": 0.001,
        "momentum": 0.95,
        "batch_size": 32,        # not given in the report for Task 2: our choice
        "weight_decay": 0.0,     # no L2 penalty
    },
    {
        "name": "l2",
        "num_epochs": 50,
        "lr": 0.001,
        "momentum": 0.95,
        "batch_size": 32,
        "weight_decay": 1e-4,    # the report's L2 strength, added to the gradient by SGD
    },
]

NORMALIZATION = data.TUTORIAL_NORMALIZATION  # per-channel (mean, std) of the inputs


class LeNet(nn.Module):
    """The tutorial's network: two 5x5 convolutions with max-pooling, three linear layers.
    This script's own copy: editing it changes this task only."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_model(config):
    """A fresh model for one config (also what benchmarks/score.py loads weights into)."""
    return LeNet()


REPORT_TASK = "Task 2: LeNet + L2 regularisation"  # where make_report.py puts its results


def main(argv=None):
    return train.run(
        train.Script(
            file=__file__,
            description=__doc__,
            build_model=build_model,
            configs=CONFIGS,
            out_dir="modelset/L2_regularization_model",
            results_file="training_result.json",
            normalization=NORMALIZATION,
        ),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
