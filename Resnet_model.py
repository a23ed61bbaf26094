"""Task 4: ResNet-18 (the CIFAR variant) on CIFAR-10, on one GPU or the CPU.

    python Resnet_model.py
    python Resnet_model.py --data-dir DIR --configs 4

The report's four runs; its best reached 89.56% after 25 epochs in 305.84 s on one A100.
Writes config_N.pth, Resnet_model_result.json and the PNGs into modelset/Resnet/.
On a 2-core CPU it trains at about 100 images/s in bf16 (where the CPU has bf16 in hardware;
about 50 in fp32): use --subset for a quick look.
"""
import sys

import torch.nn.functional as F
from torch import nn

from cifarkit import data, experiment

# batch_size 128 is our choice: the report does not state it. Times are the report's, on one A100.
CONFIGS = [
    {"num_epochs": 15, "lr": 0.01, "momentum": 0.95, "batch_size": 128,
     "reported_accuracy": 86.09, "reported_seconds": 186.00},
    {"num_epochs": 25, "lr": 0.01, "momentum": 0.95, "batch_size": 128,
     "reported_accuracy": 88.59, "reported_seconds": 300.44},
    {"num_epochs": 25, "lr": 0.005, "momentum": 0.9, "batch_size": 128,
     "reported_accuracy": 88.40, "reported_seconds": 298.37},
    {"num_epochs": 25, "lr": 0.005, "momentum": 0.95, "batch_size": 128,
     "reported_accuracy": 89.56, "reported_seconds": 305.84},
    # Beyond the report: a fast recipe within its 25-epoch budget (--configs recipe). Aimed at
    # 94% in under 40 s on one H100/H200-class GPU; not yet measured on a GPU (see README).
    {
        "name": "recipe",
        "num_epochs": 18,
        "lr": 0.2,                   # peak of the one-cycle schedule, for batch 512
        "momentum": 0.9,
        "nesterov": True,
        "batch_size": 512,
        "weight_decay": 5e-4,
        "augment": "crop+flip+cutout",
        "schedule": "onecycle",
        "label_smoothing": 0.1,
        "tta": True,
    },
]

# --amp auto on the CPU: bf16 autocast where the processor has bf16 in hardware (AVX512-BF16,
# AMX). For ResNet-18 it measured about 2x faster than fp32 there, with the same accuracy
# (benchmarks/RESULTS.md); elsewhere, and with --amp off, it trains in fp32.
CPU_AMP = True
NORMALIZATION = data.CIFAR10_NORMALIZATION  # per-channel (mean, std) of the inputs


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """3x3 stride-1 stem (no max-pool, CIFAR images are small), four stages of two
    BasicBlocks at widths 64/128/256/512, global average pool, linear classifier:
    about 11.2 M parameters."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        stages, in_channels = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(in_channels, width, stride), BasicBlock(width, width, 1)]
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_model(config):
    """A fresh model for one config (also what benchmarks/score.py loads weights into)."""
    return ResNet18()


def main(argv=None):
    return experiment.run(
        script="Resnet_model.py",
        description=__doc__,
        build_model=build_model,
        configs=CONFIGS,
        out_dir="modelset/Resnet",
        results_file="Resnet_model_result.json",
        normalization=NORMALIZATION,
        cpu_amp=CPU_AMP,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
