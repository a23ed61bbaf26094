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


def outcome(out):
    """(each epoch's seconds, every other number of every config's history, the weights)."""
    (results,) = out.glob("*.json")
    records = [record for entry in json.loads(results.read_text())["configs"]
               for record in entry["history"]]
    return ([record.pop("seconds") for record in records], records,
            b"".join(path.read_bytes() for path in sorted(out.glob("*.pth"))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        runs = {name: outcome(Path(folder) / name) for name in ("alone", "first", "second")}
    alone = sum(runs["alone"][0]) / len(runs["alone"][0])
    for name, (seconds, _, _) in runs.items():
        print(f"{name:>6}: epochs {', '.join(f'{value:.2f}' for value in seconds)} s "
              f"({sum(seconds) / len(seconds) / alone:.2f} x alone)")
    same = all(runs[name][1:] == runs["alone"][1:] for name in ("first", "second"))
    print("side by side, the same results as alone (histories and weights):",
          "yes" if same else "NO")


if __name__ == "__main__":
    main()
