"""README's quick looks, measured: each command of its "A first look" table, run as a student
runs it, on a CIFAR-10 copy.

    python benchmarks/quick_looks.py --data-dir DIR --rounds 3

For each command: the wall time from start to its last PNG (data loading included), the
final test accuracy of each config it trains, and the up-front time estimate the run printed
against the real training time (what the estimate is for). Prints a Markdown table for
benchmarks/RESULTS.md; the time and accuracy columns of README come from it.
"""
import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ESTIMATE = re.compile(r"the \d+ run\(s\) to train need about ([\d.]+) (s|min|h) in all")
CORRECTED = re.compile(r"not [\d.]+ (?:s|min|h) as estimated: the rest needs about ([\d.]+) (s|min|h)")
UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600}


def quick_looks(readme=REPO / "README.md"):
    """[(script, command)] from README's first-look table (its "quick look" column)."""
    rows = []
    for line in readme.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 4 and cells[1].startswith("`python "):
            rows.append((cells[0].strip("`"), cells[1].strip("`")))
    return rows


def measure(command, data_dir, out):
    """(wall seconds, {config id: final test accuracy}, estimated and real training seconds)."""
    words = shlex.split(command)[1:] + ["--data-dir", str(data_dir), "--out", str(out)]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *words], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"error: {command} failed ({result.returncode}):\n"
                         f"{result.stderr[-2000:]}")
    (results_file,) = [path for path in out.glob("*.json")]
    entries = json.loads(results_file.read_text())["configs"]
    estimate = ESTIMATE.search(result.stdout)
    guessed = float(estimate[1]) * UNIT_SECONDS[estimate[2]] if estimate else None
    trained = sum(entry["train_seconds"] for entry in entries)
    corrected = CORRECTED.search(result.stdout)
    guessed = (guessed, corrected and float(corrected[1]) * UNIT_SECONDS[corrected[2]])
    return wall, {entry["id"]: entry["final_test_accuracy"] for entry in entries}, guessed, trained


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a CIFAR-10 copy")
    parser.add_argument("--rounds", type=int, default=1, help="each command this many times")
    args = parser.parse_args(argv)
    print("| command | wall time | final test accuracy | estimate / training time | "
          "corrected (the rest) |")
    print("|---|---|---|---|---|")
    for _ in range(args.rounds):
        for script, command in quick_looks():
            with tempfile.TemporaryDirectory() as scratch:
                wall, accuracies, (guessed, corrected), trained = measure(
                    command, args.data_dir, Path(scratch) / "out")
            shown = ", ".join(f"{label} {value:.1f}%" for label, value in accuracies.items())
            estimate = f"{guessed:.0f} s / {trained:.0f} s ({guessed / trained - 1:+.0%})" \
                if guessed else f"none / {trained:.0f} s"
            print(f"| `{command}` | {wall:.0f} s | {shown} | {estimate} | "
                  f"{f'{corrected:.0f} s' if corrected else 'none'} |", flush=True)


if __name__ == "__main__":
    main()
