"""Task 2: LeNet with Dropout after each hidden fully connected layer, beside a control.

    python Dropout_regularization.py
    python Dropout_regularization.py --data-dir DIR --epochs 10

The report's Dropout run (50 epochs, lr 0.001, momentum 0.95, dropout 0.5) next to the same
network with dropout 0, so the effect on the train-test gap shows in the plots. Writes
config_N.pth, training_result.json and the PNGs into modelset/Dropout_regularization/.
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
        "batch_size": 32,    # not given in the report for Task 2: our choice
        "dropout": 0.0,      # dropout off: the unregularised network
    },
    {
        "name": "dropout",
        "num_epochs": 50,
        "lr": 0.001,
        "momentum": 0.95,
        "batch_size": 32,
        "dropout": 0.5,      # the report's rate: each hidden unit dropped with probability 0.5
    },
]

# What this script's model reads from a config, checked like the training keys
# (docs/configs.md): "min"/"max" inclusive, "below" exclusive; "default" when a config leaves
# it out. Add a line here for each new setting your LeNet reads in build_model().
MODEL_SETTINGS = {
    "dropout": {"kind": "float", "min": 0.0, "below": 1.0, "default": 0.5},  # rate after fc1, fc2
}

NORMALIZATION = data.TUTORIAL_NORMALIZATION  # per-channel (mean, std) of the inputs


class LeNet(nn.Module):
    """The tutorial's LeNet with nn.Dropout(dropout) after fc1 and after fc2."""

    def __init__(self, dropout=0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)


def build_model(config):
    """A fresh model for one config (also what benchmarks/score.py loads weights into)."""
    return LeNet(dropout=config.get("dropout", MODEL_SETTINGS["dropout"]["default"]))


REPORT_TASK = "Task 2: LeNet + Dropout"  # where make_report.py puts its results


def main(argv=None):
    return train.run(
        train.Script(
            file=__file__,
            description=__doc__,
            build_model=build_model,
            configs=CONFIGS,
            out_dir="modelset/Dropout_regularization",
            results_file="training_result.json",
            normalization=NORMALIZATION,
            model_settings=MODEL_SETTINGS,
        ),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
