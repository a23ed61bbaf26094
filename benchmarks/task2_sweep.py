"""Task 2's question, measured: how strong must L2 and Dropout be to shrink the gap between
training and test accuracy, and what does it cost? One command trains both sweeps, each
strength with 3 seeds, and writes their report:

    python benchmarks/task2_sweep.py --data-dir DIR          # about 20 min on a 2-core CPU

Each strength is the report's own Task 2 config (the script's "control": lr 0.001, momentum
0.95, batch 32) with only weight_decay, or dropout, changed; the report's two configs in the
scripts are not touched. Scale (--subset, --epochs): 5,000 training images and the
report's 50 epochs by default (the report trained on 50,000): the control overfits clearly,
in about half a minute a run on a CPU. Results go to OUT/L2_regularization_model and
OUT/Dropout_regularization_model (OUT: --out, default modelset/task2_sweep), and
make_report.py then writes OUT/REPORT.md with the two strength figures and their sentences.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import Dropout_regularization  # noqa: E402
import L2_regularization  # noqa: E402
import make_report  # noqa: E402

GRIDS = {  # script: (its key, the strengths)
    L2_regularization: ("weight_decay", (0.0, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)),
    Dropout_regularization: ("dropout", (0.0, 0.1, 0.25, 0.5, 0.7)),
}


def sweep_configs(script, key, strengths):
    """The script's control config once per strength, only ``key`` changed."""
    (control,) = [config for config in script.CONFIGS if config.get("name") == "control"]
    return [dict(control, name=f"{key}={strength:g}", **{key: strength})
            for strength in strengths]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="a CIFAR-10 copy (docs/data.md); default: download")
    parser.add_argument("--out", default="modelset/task2_sweep", type=Path)
    parser.add_argument("--subset", default="5000", help="training images (default 5000)")
    parser.add_argument("--epochs", default="50", help="epochs of every config (default 50)")
    parser.add_argument("--seeds", default="3", help="seeds per strength (default 3)")
    args = parser.parse_args(argv)
    common = ["--subset", args.subset, "--epochs", args.epochs, "--seeds", args.seeds]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    for script, (key, strengths) in GRIDS.items():
        script.CONFIGS = sweep_configs(script, key, strengths)
        folder = args.out / f"{Path(script.__file__).stem}_model"
        status = script.main(common + ["--out", str(folder)])
        if status != 0:
            return status
    return make_report.main(["--modelset", str(args.out)])


if __name__ == "__main__":
    sys.exit(main())
