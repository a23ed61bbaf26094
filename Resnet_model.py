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

from cifarkit import data, train

# batch_size 128 is our choice: the report does not state it. Times are the report's, on one A100.
CONFIGS = [
    {"num_epochs": 15, "lr": 0.01, "momentum": 0.95, "batch_size": 128,
     "reported_accuracy": 86.09, "reported_seconds": 186.00},
    {"num_epochs": 25, "lr": 0.01, "momentum": 0.95, "batch_size": 128,
     "reported_accuracy": 88.59, "reported_seconds": 300.44},
    {"num_epochs": 25, "lr": 0.005, "momentum": 0.9, "batch_size": 128,
     "reported_accuracy": 88.40, "reported_seconds": 298.37},
    {"name": "best",  # the report's best run
     "num_epochs": 25, "lr": 0.005, "momentum": 0.95, "batch_size": 128,
     "reported_accuracy": 89.56, "reported_seconds": 305.84},
    # Beyond the report: a fast recipe within its 25-epoch budget (--configs recipe), rebuilt
    # from David Page's DAWNBench schedule for ResNet-9 ("How to train your ResNet": batch 512,
    # 24 epochs, 94% in 79 s on a V100). Aim: a mean of >= 94% over 3 seeds in <= 25 epochs
    # and <= 40 s of training on one H100/H200. Not measured on a GPU yet: run
    # benchmarks/gpu_check.py (its resnet-recipe step trains 3 seeds) before quoting it.
    {
        "name": "recipe",
        # Page: 24 epochs for ResNet-9. ResNet-18 costs 1.5x its multiply-adds per image (555
        # M against 379 M), so here the 40 s bounds the epochs: 16 x 50,000 images in 40 s
        # needs 20,000 images/s, the middle of a guess (15-30k/s in bf16 on an H200, not
        # measured; our 40 s also holds epoch 1's cudnn autotuning, which Page's clock did
        # not). Label smoothing and flip TTA, not in Page's 79 s run, are there to win back
        # the epochs cut. Once measured: epochs = 40 s x images/s / 50,000, if accuracy allows.
        "num_epochs": 16,
        "batch_size": 512,           # Page
        # Page: 0.4 at batch 512 for a mean loss (his code sums the loss and divides the lr
        # by 512, weight decay 5e-4 x 512: with torch's SGD that is the same step, exactly).
        # It is also kuangliu's ResNet-18 lr, 0.1 at batch 128, scaled linearly to 512. Page's
        # ResNet-9 scales its logits by 0.125, ours does not: if the loss blows up, try 0.2.
        "lr": 0.4,
        "schedule": "onecycle",      # Page: linear 0 -> lr, then linear to 0, every step
        "peak_at": 0.21,             # Page: the peak at epoch 5 of 24 (0.208), as a fraction
        "momentum": 0.9,             # Page
        "nesterov": True,            # Page
        "weight_decay": 5e-4,        # Page (and kuangliu), per-sample mean formulation
        # Page: 32x32 crop of the 4-pixel reflect-padded image, flip, 8x8 cutout inside it
        "augment": "reflect-crop+flip+inside-cutout",
        "label_smoothing": 0.2,      # airbench94 (not in Page's 79 s run)
        "tta": True,                 # flip only; airbench94 also tests translated copies
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


REPORT_TASK = "Task 4: ResNet-18"  # where make_report.py puts its results


def main(argv=None):
    return train.run(
        train.Script(
            file=__file__,
            description=__doc__,
            build_model=build_model,
            configs=CONFIGS,
            out_dir="modelset/Resnet",
            results_file="Resnet_model_result.json",
            normalization=NORMALIZATION,
            cpu_amp=CPU_AMP,
        ),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
