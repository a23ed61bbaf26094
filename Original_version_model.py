"""Task 1: the PyTorch tutorial's LeNet baseline on CIFAR-10 (CPU, batch 4, 5 epochs).

    python Original_version_model.py                  # downloads CIFAR-10 into ./data
    python Original_version_model.py --data-dir DIR   # an existing copy

Reproduces the report's baseline: about 60% test accuracy after 5 epochs on the CPU. Every
1000 mini-batches it prints "epoch E: batch B loss: L", then the test accuracy. Writes
model.pth, training_loss.json and the PNGs into modelset/original_version_model/.
"""
import sys

import torch.nn.functional as F
from torch import nn

from cifarkit import data, train

CONFIGS = [
    {
        "num_epochs": 5,     # the tutorial's 5 passes over the 50,000 training images
        "lr": 0.001,         # SGD learning rate
        "momentum": 0.9,
        "batch_size": 4,     # the tutorial's mini-batch of 4 images
        "reported_accuracy": 60.0,  # the report's figure (CPU): drawn beside ours
    },
]

NORMALIZATION = data.TUTORIAL_NORMALIZATION  # per-channel (mean, std) of the inputs


class LeNet(nn.Module):
    """The tutorial's network: two 5x5 convolutions with max-pooling, three linear layers."""

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


REPORT_TASK = "Task 1: tutorial LeNet baseline"  # where make_report.py puts its results


def main(argv=None):
    return train.run(
        train.Script(
            file=__file__,
            description=__doc__,
            build_model=build_model,
            configs=CONFIGS,
            out_dir="modelset/original_version_model",
            results_file="training_loss.json",
            weights_file="model.pth",
            normalization=NORMALIZATION,
            default_device="cpu",
            log_every=1000,
        ),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
