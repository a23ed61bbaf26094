"""The Task 3 speedrun config with one change at a time: training seconds (as the kit records
them: the epochs, not the test passes) and final test accuracy, each variant with each seed.

    python benchmarks/speedrun_ablation.py --data-dir DIR
    python benchmarks/speedrun_ablation.py --data-dir DIR --seeds 3 --variants "3 epochs, peak 0.1"

All in one process, one variant after the other, on the CPU in fp32 with torch's default
threads (--threads to change it), through the kit's own loop (cifarkit.train.fit).
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import Original_version_model_multiGPU as task3  # noqa: E402
from cifarkit import data, train  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402

SPEEDRUN = next(config for config in task3.CONFIGS if config.get("name") == "speedrun")
THREE = {"num_epochs": 3, "peak_at": 0.1}
VARIANTS = {  # name: what it changes in the speedrun config
    "speedrun": {},
    "4 epochs": {"num_epochs": 4},
    "3 epochs": {"num_epochs": 3},
    "4 epochs, peak 0.1": {"num_epochs": 4, "peak_at": 0.1},
    "3 epochs, peak 0.1": THREE,
    "3 epochs, peak 0.05": {"num_epochs": 3, "peak_at": 0.05},
    "3 epochs, peak 0.1, no TTA": dict(THREE, tta=False),
    "3 epochs, peak 0.1, no flip": dict(THREE, augment="none"),
    "3 epochs, peak 0.1, no label smoothing": dict(THREE, label_smoothing=0.0),
    "3 epochs, peak 0.1, label smoothing 0.2": dict(THREE, label_smoothing=0.2),
    "3 epochs, peak 0.1, lr 0.07": dict(THREE, lr=0.07),
    "3 epochs, peak 0.1, momentum 0.95, lr 0.05": dict(THREE, momentum=0.95, lr=0.05),
    "3 epochs, peak 0.1, weight decay 1e-3": dict(THREE, weight_decay=1e-3),
    "3 epochs, peak 0.1, batch 64, lr 0.07": dict(THREE, batch_size=64, lr=0.07),
    "3 epochs, peak 0.1, batch 256, lr 0.15": dict(THREE, batch_size=256, lr=0.15),
    "3 epochs, peak 0.1, batch 512, lr 0.3": dict(THREE, batch_size=512, lr=0.3),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 (default 1)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        metavar="NAME", help="some of: " + "; ".join(VARIANTS) + " (default: all)")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads")
    parser.add_argument("--subset", type=int, help="fewer images (for the tests)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = data.load_cifar10(args.data_dir, args.subset, 0)
    runtime = rt.init_runtime("cpu", amp="off")
    on_device = data.to_device(dataset, task3.NORMALIZATION, runtime.device)
    print(f"{len(dataset.train_labels)} training images, {torch.get_num_threads()} threads")
    print("| variant | training s, each seed | mean s | test accuracy %, each seed | mean % |")
    print("|---|---|---|---|---|")
    rows = {}
    for name in args.variants:
        chosen = dict(SPEEDRUN, **VARIANTS[name])
        seconds, accuracies = [], []
        for seed in range(args.seeds):
            train.seed_everything(seed)
            model = rt.place_model(task3.build_model(chosen), runtime)
            history = train.fit(model, chosen, on_device, runtime, seed).progress["history"]
            seconds.append(sum(record["seconds"] for record in history))
            accuracies.append(history[-1]["test_accuracy"])
        rows[name] = seconds, accuracies
        print(f"| {name} | {' / '.join(f'{value:.1f}' for value in seconds)} | "
              f"{statistics.mean(seconds):.1f} | "
              f"{' / '.join(f'{value:.2f}' for value in accuracies)} | "
              f"{statistics.mean(accuracies):.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
