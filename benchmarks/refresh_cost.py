"""What the live outputs cost per refresh: the results JSON and the three PNGs, for a run of
the Task 3 sweep's size (11 configs x 50 epochs).

    python benchmarks/refresh_cost.py
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifarkit import outputs, results  # noqa: E402


def sweep_sized_entries(configs=11, epochs=50):
    history = [{"epoch": epoch, "train_loss": 2 - 0.01 * epoch, "train_accuracy": 30 + epoch / 2,
                "test_accuracy": 30 + epoch * 0.4, "lr": 0.01, "seconds": 3.0}
               for epoch in range(1, epochs + 1)]
    return [{"id": f"config_{number}", "seed": 0, "status": "finished", "history": history,
             "config": {"num_epochs": epochs, "lr": 0.01 * number, "batch_size": 128}}
            for number in range(1, configs + 1)]


def main():
    entries = sweep_sized_entries()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        for _ in range(10):
            results.save_json({"script": "sweep", "configs": entries}, Path(folder) / "r.json")
        json_seconds = (time.perf_counter() - started) / 10
        started = time.perf_counter()
        for _ in range(3):
            outputs.plot_run(entries, folder, "Original_version_model_multiGPU.py", 0)
        png_seconds = (time.perf_counter() - started) / 3
    print(f"save_json: {json_seconds * 1000:.1f} ms; plot_run (three PNGs): {png_seconds:.2f} s")


if __name__ == "__main__":
    main()
