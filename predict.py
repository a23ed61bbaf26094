"""Predict the class of your own pictures with weights that one of the scripts trained.

    python predict.py modelset/Resnet/config_1.pth my_cat.jpg my_plane.png

The run behind the weights (its record in runs/, named by the results JSON beside them) says
which script, config and input normalization made them, so the model is built and fed exactly
as in training; if the script's model has changed since, it says so instead of predicting.
Each picture is shrunk to 32x32 RGB (CIFAR-10's size: a small, centred object works best) and
the three likeliest of the ten classes are printed. Works from any folder:
`python path/to/kit/predict.py ...`.

Exit status: 0 done; 2 a file that cannot be used (named in one line).
"""
import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts and cifarkit

from cifarkit import config, runs, store  # noqa: E402
from cifarkit.data import CLASSES, normalizer  # noqa: E402
from cifarkit.errors import UserError  # noqa: E402
from cifarkit.results import load_results  # noqa: E402


def trained_with(weights):
    """(what made ``weights``: a run record, or where its run.json cannot be read the results
    JSON with the entry's fields; the run's folder or None)."""
    weights = Path(weights)
    record = store.read_record(weights.parent) if weights.name == store.WEIGHTS else None
    if record is not None:
        return record, weights.parent
    for path in sorted(weights.parent.glob("*.json")):
        if older := store.pre_store(weights.parent, path.name):
            raise UserError(f"{weights}: its folder was {older}.")
        results = load_results(path)
        for entry in results["configs"] if isinstance(results, dict) else []:
            if entry.get("weights") == weights.name:
                run = entry.get("run")
                record = store.read_record(weights.parent / run) if isinstance(run, str) else None
                if record is not None:
                    return record, weights.parent / run
                return dict(results, **entry), None
    raise UserError(f"{weights}: no results JSON beside it names this file, so which script, "
                    f"config and normalization made it is unknown.")


def load_trained(weights, script_name=None):
    """(model in eval mode on the CPU, its normalization (mean, std), its script's name) for
    a weights file; ``script_name`` when no results JSON describes it (normalization then the
    script's). A model whose script has changed since the run is refused, not used."""
    weights = Path(weights)
    if not weights.is_file():
        there = sorted(path.name for path in weights.parent.glob("*.pth") if path.is_file()) \
            if weights.parent.is_dir() else []
        raise UserError(f"{weights}: no such weights file. " + (
            f"The weights in {weights.parent}: {', '.join(there)}." if there else
            "Train first: the scripts write config_N.pth (model.pth for the baseline)."))
    record, run_dir = trained_with(weights) if script_name is None else ({"config": {}}, None)
    script_name = script_name or Path(record["script"]).stem
    try:
        script = importlib.import_module(script_name)
    except ImportError:
        raise UserError(f"{weights}: made by {script_name}.py, which is not beside "
                        f"predict.py.") from None
    # a MODEL_SETTINGS key the script added since: its default, as a rerun would train it
    chosen = dict(config.model_rules(getattr(script, "MODEL_SETTINGS", {}))[1],
                  **record["config"])
    if run_dir is not None and record.get("weights_sha256") not in (None, store.sha256(weights)):
        raise UserError(f"{weights}: not the weights its run {run_dir.name} finished with (the "
                        f"file was changed since); rerun {script_name}.py to rebuild the views, "
                        f"or use {run_dir / store.WEIGHTS}.")
    if run_dir is None and "run" in record:  # config_N.pth and its JSON copied alone
        print(f"note: {weights}: its run ({record['run']}) is not beside it, so whether "
              f"{script_name}.py's model has changed since these weights were trained is not "
              f"checked.", file=sys.stderr)
    recorded = (record.get("identity") or {}).get("model")
    if run_dir is not None and isinstance(recorded, dict):
        now = runs.model_identity(script.build_model, chosen,
                                  str(record.get("label", "config_1")))
        if not store.same_model(recorded, now):
            raise UserError(f"{weights}: {script_name}.py's model has changed since these "
                            f"weights were trained (run {run_dir.name}): its class, build_model "
                            f"or a value its forward reads. Undo that edit to predict with "
                            f"them, or rerun {script_name}.py to train the model as it is now.")
    model = script.build_model(chosen)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as error:  # not a state_dict, or one of another model
        raise UserError(f"{weights}: does not load as the weights of {script_name}'s model "
                        f"({type(error).__name__}).") from None
    normalization = (record.get("data") or {}).get("normalization") or script.NORMALIZATION
    return model.eval(), normalization, script_name


def read_picture(path):
    """A picture as a (1, 3, 32, 32) uint8 tensor, shrunk as CIFAR-10's images were, the way
    up its camera meant (EXIF orientation) and 16-bit pictures scaled to 8 bits."""
    import numpy as np
    from PIL import Image, ImageOps

    if Path(path).exists() and not Path(path).is_file():  # a named pipe would wait for ever
        raise UserError(f"{path}: not a picture this can read (not a regular file).")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grey
                values = np.asarray(image, dtype=np.float64)
                top = 65535 if image.mode != "F" and values.max() > 255 else max(values.max(), 1)
                image = Image.fromarray((values * (255 / top)).round().astype(np.uint8))
            small = image.convert("RGB").resize((32, 32), Image.BICUBIC)
    except Image.DecompressionBombError as error:
        raise UserError(f"{path}: too large a picture to read safely ({error}).") from None
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
    except KeyboardInterrupt:
        print("\nStopped by Ctrl-C; nothing was predicted.", file=sys.stderr)
        return 130
    for path, row in zip(args.pictures, class_probabilities(model, normalization, pictures)):
        top = row.topk(3)
        guesses = ", ".join(f"{CLASSES[index]} {100 * value:.0f}%"
                            for value, index in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {guesses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
