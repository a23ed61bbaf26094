"""Test accuracy of saved weights on the whole test set, in fp32.

    python benchmarks/score.py --data-dir ../shared/cifar10-jpeg \
        modelset/Resnet/config_1.pth modelset/Resnet/config_1_seed1.pth

Each weights file is loaded into the model of the script that wrote it (found from the
results JSON beside it, or named with --script) and scored on all test images, so runs made
with --subset, whose own figures come from a slice of the test set, can be compared closely.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifarkit import data, train  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402
from cifarkit.errors import UserError  # noqa: E402
from predict import load_trained  # noqa: E402

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="config_N.pth / model.pth files")
    parser.add_argument("--data-dir", help="a CIFAR-10 copy (default: torchvision's ./data)")
    parser.add_argument("--script", help="the script that wrote the weights, e.g. Resnet_model")
    args = parser.parse_args(argv)
    missing = [weights for weights in args.weights if not Path(weights).is_file()]
    if missing:
        raise SystemExit(f"error: no such weights file: {', '.join(missing)}")
    try:
        dataset = data.load_cifar10(args.data_dir)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    cpu = rt.Runtime(torch.device("cpu"))
    scores = {}
    for weights in args.weights:
        try:
            model, normalization, script_name = load_trained(weights, args.script)
        except UserError as error:
            raise SystemExit(f"error: {error}") from None
        scale, shift = data.normalizer(*normalization, device="cpu")
        model = rt.place_model(model, cpu)
        scores[weights] = train.accuracy(
            train.predict(model, dataset.test_images, scale, shift, cpu), dataset.test_labels)
        print(f"{weights}: {scores[weights]:.2f}% of {len(dataset.test_labels)} test images "
              f"({script_name}, fp32)", flush=True)
    return scores


if __name__ == "__main__":
    main()
