"""Two runs of one script at once on this CPU against one alone: each epoch's time, and whether
the two computed what the lone run did (every number but the times, and the weights).

    python benchmarks/side_by_side.py --data-dir DIR
    python benchmarks/side_by_side.py --data-dir DIR --script Original_version_model.py --epochs 2

Each run keeps torch's default threads (one per core); the kit's runs take turns at the CPU
(docs/precision-and-speed.md). Any further flags go to the script (default: the L2 control,
--configs 1 --subset 10000 --epochs 3).
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def histories(out):
    """[(config id, seed, epoch seconds, the history without them)] and the weights' bytes."""
    (results,) = [path for path in out.glob("*.json")]
    entries = json.loads(results.read_text())["configs"]
    weights = b"".join(path.read_bytes() for path in sorted(out.glob("*.pth")))
    return [(entry["id"], entry["seed"], [record["seconds"] for record in entry["history"]],
             [{key: value for key, value in record.items() if key != "seconds"}
              for record in entry["history"]]) for entry in entries], weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--script", default="L2_regularization.py")
    args, flags = parser.parse_known_args()
    flags = flags or ["--configs", "1", "--subset", "10000", "--epochs", "3"]
    with tempfile.TemporaryDirectory() as folder:
        def start(name):
            return subprocess.Popen([sys.executable, str(REPO / args.script), "--data-dir",
                                     args.data_dir, "--out", str(Path(folder) / name)] + flags,
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        for names in (["alone"], ["first", "second"]):  # one alone, then two at once
            for process in [start(name) for name in names]:
                output = process.communicate()[0]
                if process.returncode:
                    sys.exit(output)
        alone, first, second = (histories(Path(folder) / name)
                                for name in ("alone", "first", "second"))
    mean = sum(alone[0][0][2]) / len(alone[0][0][2])
    for name, (entries, _) in (("alone", alone), ("first", first), ("second", second)):
        seconds = entries[0][2]
        print(f"{name:>6}: epochs {', '.join(f'{value:.2f}' for value in seconds)} s "
              f"({sum(seconds) / len(seconds) / mean:.2f} x alone)")
    same = [run[0][0][3] == alone[0][0][3] and run[1] == alone[1] for run in (first, second)]
    print("side by side, the same results as alone (histories and weights):",
          "yes" if all(same) else "NO")


if __name__ == "__main__":
    main()
