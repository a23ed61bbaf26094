"""Predict the class of your own pictures with weights that one of the scripts trained.

    python predict.py modelset/Resnet/config_1.pth my_cat.jpg my_plane.png

The results JSON beside the weights says which script, config and input normalization made
them, so the model is built and fed exactly as in training. Each picture is shrunk to 32x32
RGB (CIFAR-10's size: a small, centred object works best) and the three likeliest of the ten
classes are printed. Works from any folder: `python path/to/kit/predict.py ...`.

Exit status: 0 done; 2 a file that cannot be used (named in one line).
"""
import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts and cifarkit

from cifarkit.data import CLASSES, normalizer  # noqa: E402
from cifarkit import ledger  # noqa: E402
from cifarkit.errors import UserError  # noqa: E402


def trained_with(weights):
    """(results JSON, its entry) that names ``weights`` as a finished config's weights."""
    weights = Path(weights)
    for path in sorted(weights.parent.glob("*.json")):
        try:
            results = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError, RecursionError):
            continue
        entries = results.get("configs") if isinstance(results, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("weights") == weights.name:
                return results, entry
    raise UserError(f"{weights}: no results JSON beside it names this file, so which script, "
                    f"config and normalization made it is unknown.")


def load_trained(weights, script_name=None):
    """(model in eval mode on the CPU, its normalization (mean, std), its script's name) for
    a weights file; ``script_name`` when no results JSON describes it (normalization then the
    script's)."""
    if not Path(weights).is_file():
        pending = ledger.read_journal(Path(weights).parent)  # refused when unreadable
        raise UserError(f"{weights}: no such weights file." + (
            " A move of that folder's results was interrupted and may hold it under a hidden "
            "name: run the script that wrote the folder once more (or make_report.py) to "
            "complete the move, then try again." if pending else ""))
    results, entry = trained_with(weights) if script_name is None else ({}, {"config": {}})
    script_name = script_name or Path(results["script"]).stem
    try:
        script = importlib.import_module(script_name)
    except ImportError:
        raise UserError(f"{weights}: made by {script_name}.py, which is not beside "
                        f"predict.py.") from None
    model = script.build_model(entry["config"])
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as error:  # not a state_dict, or one of another model
        raise UserError(f"{weights}: does not load as the weights of {script_name}'s model "
                        f"({type(error).__name__}).") from None
    normalization = results.get("data", {}).get("normalization") or script.NORMALIZATION
    return model.eval(), normalization, script_name


def read_picture(path):
    """A picture as a (1, 3, 32, 32) uint8 tensor, shrunk as CIFAR-10's images were."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            small = image.convert("RGB").resize((32, 32), Image.BICUBIC)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a picture this can read ({error}).") from None
    return torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(
        32, 32, 3).permute(2, 0, 1).unsqueeze(0)


@torch.inference_mode()
def class_probabilities(model, normalization, pictures):
    """Softmax over the ten classes, one row per (N, 3, 32, 32) uint8 picture."""
    scale, shift = normalizer(*normalization, device="cpu")
    return model(torch.addcmul(shift, pictures.float(), scale)).softmax(dim=1)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a config_N.pth (or model.pth) a script wrote")
    parser.add_argument("pictures", nargs="+", help="PNG or JPEG files")
    args = parser.parse_args(argv)
    try:
        model, normalization, script_name = load_trained(args.weights)
        pictures = torch.cat([read_picture(path) for path in args.pictures])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, row in zip(args.pictures, class_probabilities(model, normalization, pictures)):
        top = row.topk(3)
        guesses = ", ".join(f"{CLASSES[index]} {100 * value:.0f}%"
                            for value, index in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {guesses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
