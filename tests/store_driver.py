"""The Task 2 L2 script with CONFIGS chosen by the command line, for the kill tests of
tests/test_resume_and_signals.py (a real process, so strace can kill it at any system call).

    python tests/store_driver.py before|after --data-dir D --out O --device cpu

before: two configs; after: the second one's lr edited.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import L2_regularization as script  # noqa: E402

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
script.CONFIGS = {"before": [A, B], "after": [A, dict(B, lr=0.05)]}[sys.argv[1]]

if __name__ == "__main__":
    sys.exit(script.main(sys.argv[2:]))
