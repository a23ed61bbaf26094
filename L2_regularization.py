"""Task 2: LeNet with L2 regularisation (SGD weight decay), beside an unregularised control.

    python L2_regularization.py
    python L2_regularization.py --data-dir DIR --epochs 10

The report's L2 run (50 epochs, lr 0.001, momentum 0.95, weight decay 1e-4) next to the same
run without weight decay, so the effect on the train-test gap shows in the plots. Writes
config_N.pth, training_result.json and the PNGs into modelset/L2_regularization_model/.
"""
import sys

from cifarkit import data, experiment
from Original_version_model import LeNet  # the same network as Task 1; define a class here to change it

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


def build_model(config):
    """A fresh model for one config (also what benchmarks/score.py loads weights into)."""
    return LeNet()


def main(argv=None):
    return experiment.run(
        script="L2_regularization.py",
        description=__doc__,
        build_model=build_model,
        configs=CONFIGS,
        out_dir="modelset/L2_regularization_model",
        results_file="training_result.json",
        normalization=NORMALIZATION,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
