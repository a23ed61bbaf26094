"""The report's tables and figures, regenerated from whatever the scripts wrote into modelset/.

    python make_report.py                   # reads modelset/, writes modelset/REPORT.md
    python make_report.py --modelset DIR    # another folder holding the scripts' folders

Reads every results JSON one folder below modelset/ and writes REPORT.md (a results table per
script, the Task 2 train-test gap, the Task 3 sweep, LeNet against ResNet-18 for time, the best
config's confusion matrix and example predictions, and what has not been run yet) with its
figures in modelset/figures/.
"""
import argparse
import sys
from pathlib import Path

from cifarkit import report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make_report.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modelset", default="modelset", metavar="DIR",
                        help="the folder holding the scripts' output folders (default: modelset)")
    args = parser.parse_args(argv)
    if not Path(args.modelset).is_dir():
        print(f"error: --modelset {args.modelset}: no such folder. Run a script first, e.g. "
              f"python Original_version_model.py", file=sys.stderr)
        return 2
    path = report.write_report(args.modelset)
    print(f"Report written to {path} (figures in {path.parent / 'figures'}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
