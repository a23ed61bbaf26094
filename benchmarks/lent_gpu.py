"""Everything a lent GPU machine needs, in one command:

    python benchmarks/lent_gpu.py --zip gpu-data/cifar10-jpeg.zip --out "$OUT" [--only ...]

Unzips the CIFAR-10 copy (a zip of the image-folder tree train/<class>/, test/<class>/, as
../shared/cifar10-jpeg.zip is) into a scratch folder, decodes it once into torchvision's batch
files (each step's process then reads them in a fraction of a second instead of decoding
60,000 JPEGs), and runs benchmarks/gpu_check.py with its record (gpu_check.json, gpu_check.md,
the logs; no weights, no data) under --out, written after every step: a command cut off at the
machine's time limit keeps every step done. Other flags go to gpu_check.py (--only, --quick).
Exit status: gpu_check's.
"""
import argparse
import pickle
import signal
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check  # noqa: E402  (it puts the repository on the path, for cifarkit)
from cifarkit import data, signals  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lent_gpu.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", required=True, type=Path, help="the CIFAR-10 image-folder zip")
    parser.add_argument("--out", required=True, type=Path, help="where the record goes")
    args, passed_on = parser.parse_known_args(argv)
    flags = ["--out", str(args.out), *passed_on]
    try:  # the flags, before the minutes of unzipping
        gpu_check.parse(["--data-dir", str(args.zip), *flags], data_ready=False)
    except SystemExit as refused:
        return refused.code
    if not zipfile.is_zipfile(args.zip):
        print(f"error: --zip {args.zip}: not a zip file", file=sys.stderr)
        return 2
    try:
        with signals.sigterm_as_interrupt(), \
                tempfile.TemporaryDirectory(prefix="lent-gpu-") as scratch:
            data_dir = Path(scratch) / "data"
            try:
                with zipfile.ZipFile(args.zip) as archive:
                    archive.extractall(data_dir / "images")
                as_batch_files(data_dir / "images", data_dir)
            except (zipfile.BadZipFile, data.DataError, OSError) as error:
                print(f"error: --zip {args.zip}: " + str(error).replace(
                    str(data_dir / "images"), "the zip"), file=sys.stderr)
                return 2
            return gpu_check.main(["--data-dir", str(data_dir), "--work",
                                   str(Path(scratch) / "work"), *flags])
    except KeyboardInterrupt as stop:  # the scratch folder is gone with the with-block
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"\nStopped by {'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'} before the "
              f"check began.", file=sys.stderr)
        return signals.EXIT[signum]


def as_batch_files(image_folders, root):
    """The images of ``image_folders``, decoded, as ``root``/cifar-10-batches-py/: five
    training batches, the test batch and batches.meta, as torchvision's download has them."""
    dataset = data.load_cifar10(image_folders)
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(dataset.train_labels)), 5)
    parts = [(f"data_batch_{number}", dataset.train_images[chunk], dataset.train_labels[chunk])
             for number, chunk in enumerate(chunks, start=1)]
    for name, images, labels in parts + [("test_batch", dataset.test_images,
                                          dataset.test_labels)]:
        batch = {"data": images.reshape(len(labels), -1).numpy(), "labels": labels.tolist()}
        (batches / name).write_bytes(pickle.dumps(batch))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.CLASSES)}))


if __name__ == "__main__":
    sys.exit(main())
