"""CIFAR-10 from disk to uint8 tensors, once; then batches cut by index and augmented on the
training device (random crop, flip and cutout for the whole batch at once)."""
import contextlib
import hashlib
import io
import os
import pickle
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .results import CLASSES
from .store import lock

DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DEFAULT_ROOT = "./data"
# (mean, std) per channel. The tutorial's maps [0, 1] to [-1, 1]; the other is CIFAR-10's own.
TUTORIAL_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CIFAR10_NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

HOW_TO_PROVIDE = (
    "Provide CIFAR-10 in one of these ways:\n"
    f"  - let torchvision download it (needs the network): {DOWNLOAD_URL}\n"
    "  - pass --data-dir DIR, where DIR holds one of:\n"
    "      DIR/cifar-10-batches-py/   (torchvision's unpacked batches)\n"
    "      DIR/cifar-10-python.tar.gz (the archive from the URL above)\n"
    "      DIR/train/<class>/*.png|jpg and DIR/test/<class>/*.png|jpg, with the ten class\n"
    f"      folders {', '.join(CLASSES)}"
)


class DataError(UserError):
    """The data set cannot be found or read; the message says where and why."""


@dataclass
class Dataset:
    train_images: torch.Tensor  # uint8, N x 3 x 32 x 32
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str                 # where the images came from, for the results JSON


@dataclass
class OnDevice:  # the uint8 images on the training device, and how to normalise them
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


def data_fingerprint(dataset):
    """Every image and label digested: tells apart a copy replaced in place (same path, counts)."""
    digest = hashlib.sha256()
    for tensor in (dataset.train_images, dataset.train_labels, dataset.test_images,
                   dataset.test_labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def to_device(dataset, normalization, device):
    return OnDevice(dataset.train_images.to(device), dataset.train_labels.to(device),
                    dataset.test_images.to(device), dataset.test_labels.to(device),
                    *normalizer(*normalization, device=device))


DOWNLOAD_WAIT = 1800  # seconds a run waits for another process's download before giving up


def wait_for_lock(root):
    """The download lock on ``root``, waiting (and saying for whom) at most DOWNLOAD_WAIT s."""
    handle, waited = lock(root, blocking=False), time.monotonic()
    if handle is None and "RANK" not in os.environ:  # under torchrun the ranks queue quietly
        print(f"Waiting for another process ({lock_holder(root)}) that is downloading CIFAR-10 "
              f"into {root.absolute()}.", file=sys.stderr, flush=True)
    while handle is None:
        if time.monotonic() - waited > DOWNLOAD_WAIT:
            raise DataError(f"{root.absolute()}: another process ({lock_holder(root)}) has "
                            f"been downloading CIFAR-10 there for {DOWNLOAD_WAIT / 60:.0f} min; "
                            f"gave up waiting. Stop it, or run with --data-dir DIR.")
        time.sleep(min(1.0, DOWNLOAD_WAIT / 10))
        handle = lock(root, blocking=False)
    return handle


def lock_holder(root):
    """'pid N' of the process holding ``root``'s lock, as Linux's /proc/locks tells."""
    try:
        inode = os.stat(root).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and fields[-3].endswith(f":{inode}"):
                return f"pid {fields[-4]}"
    except (OSError, IndexError):
        pass
    return "pid unknown"


def load_cifar10(data_dir=None, subset=None, seed=0, download_root=DEFAULT_ROOT):
    """CIFAR-10 decoded once into uint8 tensors; torchvision downloads it when data_dir is None.
    ``subset=N``: N training images and a test slice in proportion, class-balanced by ``seed``."""
    note = "" if subset is None else f" (class-balanced subset, seed {seed})"
    root = Path(download_root if data_dir is None else data_dir)
    if data_dir is None:
        import torchvision  # only the download path needs it
        from torchvision.datasets.utils import check_integrity

        try:  # one process per machine at a time: under torchrun the others find the files
            root.mkdir(parents=True, exist_ok=True)
            handle = wait_for_lock(root)
            try:
                for train in (True, False):
                    torchvision.datasets.CIFAR10(root=root, train=train, download=True)
            finally:
                os.close(handle)
        except Exception as error:  # no network, refused, corrupt download: all end the same
            with contextlib.suppress(OSError):  # leave no empty ./data behind
                root.rmdir()
            folder, why = root / "cifar-10-batches-py", f"{type(error).__name__}: {error}"
            damaged = [name for name, md5 in torchvision.datasets.CIFAR10.train_list
                       + torchvision.datasets.CIFAR10.test_list
                       if not check_integrity(str(folder / name), md5)]
            if folder.is_dir() and damaged:
                raise DataError(
                    f"{folder.absolute()}: a copy of CIFAR-10 is there but damaged ("
                    f"{', '.join(damaged)} missing or failing torchvision's checksum), and "
                    f"downloading a fresh one failed ({why}). Delete that folder to download "
                    f"again, or use another copy.\n{HOW_TO_PROVIDE}") from None
            raise DataError(f"Could not find or download CIFAR-10 in {root.absolute()} ({why})."
                            f"\n{HOW_TO_PROVIDE}") from None
        dataset = _load_batches(root / "cifar-10-batches-py")
    elif not root.is_dir():
        raise DataError(f"--data-dir {root}: no such folder.\n{HOW_TO_PROVIDE}")
    elif (root / "cifar-10-batches-py").is_dir():
        dataset = _load_batches(root / "cifar-10-batches-py")
    elif (root / "cifar-10-python.tar.gz").is_file():
        dataset = _load_batches(root / "cifar-10-python.tar.gz")
    elif (root / "train").is_dir() or (root / "test").is_dir():
        return _load_image_folders(root, subset, seed, note)  # decodes the subset's files only
    else:
        raise DataError(f"--data-dir {root} holds no CIFAR-10 copy in a layout this kit reads."
                        f"\n{HOW_TO_PROVIDE}")
    if subset is None:
        return dataset
    train_index, test_index = subset_indices(dataset.train_labels, dataset.test_labels,
                                             subset, seed)
    return Dataset(dataset.train_images[train_index], dataset.train_labels[train_index],
                   dataset.test_images[test_index], dataset.test_labels[test_index],
                   source=dataset.source + note)


class _ArrayUnpickler(pickle.Unpickler):
    """Refuses any object a CIFAR-10 batch never holds, so a doctored file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")} | {
        (f"numpy.{core}.{module}", name) for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                             ("numeric", "_frombuffer"))}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 "
                                         f"batch never holds")
        return super().find_class(module, name)


def _load_batches(path):
    """The six pickled batches, from torchvision's unpacked folder or the .tar.gz archive."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if path.is_dir():
        contents = {name: (path / name).read_bytes() for name in names if (path / name).is_file()}
    else:
        try:
            with tarfile.open(path, "r:gz") as archive:
                contents = {Path(member.name).name: archive.extractfile(member).read()
                            for member in archive.getmembers() if member.isfile()}
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(f"{path}: not a readable .tar.gz archive ({error}).") from None
    missing = [name for name in names if name not in contents]
    if missing:
        raise DataError(f"{path / missing[0]}: batch file missing from the CIFAR-10 folder {path}."
                        if path.is_dir() else f"{path}: the archive has no {missing[0]}.")
    arrays = []
    for name in names:
        try:
            batch = _ArrayUnpickler(io.BytesIO(contents[name]), encoding="latin1").load()
            images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch["labels"], dtype=np.int64)
        except Exception as error:
            raise DataError(f"{name}: not a readable CIFAR-10 batch file "
                            f"({type(error).__name__}: {error}).") from None
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels.")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{name}: labels outside 0-9 (found {labels.min()}..{labels.max()}).")
        arrays.append((images, labels))
    images, labels = zip(*arrays)  # the five training batches, then the test batch
    return Dataset(*(torch.from_numpy(np.concatenate(part))
                     for part in (images[:-1], labels[:-1], images[-1:], labels[-1:])),
                   f"pickled batches in {path}" if path.is_dir() else f"archive {path}")


def _listing(folder):
    try:
        return list(folder.iterdir())
    except OSError as error:
        raise DataError(f"{folder}: cannot be read ({error.strerror or error}). Give yourself "
                        f"read access to it (chmod -R u+rX), or use another copy.") from None


def _load_image_folders(root, subset, seed, note):
    """train/ and test/, each with the ten class folders; decodes only the chosen files."""
    from PIL import Image  # Pillow comes with torchvision

    files = []  # per split: [(path, label)]
    for split_dir in (root / "train", root / "test"):
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: folder missing (an image-folder copy needs train/ "
                            f"and test/, each with the ten class folders).")
        extra = sorted(entry.name for entry in _listing(split_dir)
                       if entry.is_dir() and entry.name not in CLASSES)
        if extra:
            raise DataError(f"{split_dir}: folders that are not CIFAR-10 classes: "
                            f"{', '.join(extra)} (expected exactly {', '.join(CLASSES)}).")
        files.append([])
        for label, name in enumerate(CLASSES):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                raise DataError(f"{class_dir}: class folder missing.")
            images = sorted(path for path in _listing(class_dir)
                            if path.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if not images:
                raise DataError(f"{class_dir}: class folder holds no .png or .jpg images.")
            files[-1] += [(path, label) for path in images]
    labels = [torch.tensor([label for _, label in split], dtype=torch.int64) for split in files]
    tensors = []
    for split, split_labels, index in zip(files, labels, subset_indices(*labels, subset, seed)):
        images = []
        for path, _ in (split[i] for i in index.tolist()):
            try:
                with Image.open(path) as image:  # reads the header only: check, then decode
                    if image.size != (32, 32) or image.mode != "RGB":
                        raise DataError(f"{path}: a {image.size[0]}x{image.size[1]} "
                                        f"{image.mode} image; CIFAR-10 images are 32x32 RGB.")
                    pixels = np.asarray(image, dtype=np.uint8)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                raise DataError(f"{path}: cannot decode this image ({error}).") from None
            images.append(torch.from_numpy(pixels.transpose(2, 0, 1).copy()))
        tensors += [torch.stack(images), split_labels[index]]
    return Dataset(*tensors, source=f"image folders in {root}{note}")


def subset_indices(train_labels, test_labels, subset, seed):
    """(train, test) indices: all, or ``subset`` of train and as many in proportion of test."""
    if subset is None:
        return torch.arange(len(train_labels)), torch.arange(len(test_labels))
    if not 10 <= subset <= len(train_labels):
        raise UserError(f"--subset {subset}: must be between 10 and the {len(train_labels)} "
                        f"training images of this copy.")
    test_count = max(10, round(subset * len(test_labels) / len(train_labels)))
    chosen = []
    for labels, count, split, split_seed in ((train_labels, subset, "training", seed),
                                             (test_labels, test_count, "test", seed + 1)):
        generator = torch.Generator().manual_seed(split_seed)
        picked = []
        for label, class_name in enumerate(CLASSES):
            wanted = count // len(CLASSES) + (1 if label < count % len(CLASSES) else 0)
            members = torch.nonzero(labels == label).flatten()
            if wanted > len(members):
                raise UserError(f"--subset {subset}: needs {wanted} {split} images of class "
                                f"{class_name} ({count} {split} images in all, spread evenly "
                                f"over the classes), but this copy's {split} set has only "
                                f"{len(members)}. Choose a smaller --subset.")
            picked.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
        chosen.append(torch.sort(torch.cat(picked)).values)
    return tuple(chosen)


def normalizer(mean, std, device):
    """(scale, shift) so that ``uint8 * scale + shift`` is ``(x / 255 - mean) / std``."""
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)
                 for v in (mean, std))
    return 1.0 / (255.0 * std), -mean / std


def batch_order(count, batch_size, seed, epoch):
    """An epoch's batches of indices, from (seed, epoch): a resumed run sees the same ones."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).split(batch_size)


# (crop border "zeros"/"reflect", flip, cutout "overhang"/"inside"); "reflect-": Page's DAWNBench
AUGMENTATIONS = {
    "none": (None, False, None),
    "flip": (None, True, None),
    "crop+flip": ("zeros", True, None),
    "crop+flip+cutout": ("zeros", True, "overhang"),
    "reflect-crop+flip": ("reflect", True, None),
    "reflect-crop+flip+inside-cutout": ("reflect", True, "inside"),
}


def random_crop(batch, padding=4, border="zeros"):
    """torchvision's RandomCrop(32, padding, padding_mode "constant" or "reflect") per image, for
    the whole batch; reflected on the gather indices: no uint8 reflect-pad kernel needed."""
    count, _, height, width = batch.shape
    top = torch.randint(0, 2 * padding + 1, (count, 1, 1), device=batch.device)
    left = torch.randint(0, 2 * padding + 1, (count, 1, 1), device=batch.device)
    rows = top + torch.arange(height, device=batch.device).view(1, -1, 1)       # (count, h, 1)
    columns = left + torch.arange(width, device=batch.device).view(1, 1, -1)    # (count, 1, w)
    source = batch if border == "reflect" else torch.nn.functional.pad(batch, (padding,) * 4)
    if border == "reflect":  # -1 -> 1, size -> size - 2: mirrored without repeating the edge
        rows = (height - 1) - ((height - 1) - (rows - padding).abs()).abs()
        columns = (width - 1) - ((width - 1) - (columns - padding).abs()).abs()
    flat = (rows * source.shape[3] + columns).flatten(1)        # (count, height * width)
    pixels = source.flatten(2).gather(2, flat.unsqueeze(1).expand(-1, batch.shape[1], -1))
    return pixels.view_as(batch)


def random_flip(batch):
    flip = torch.rand(len(batch), device=batch.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)


def cutout(batch, size=8, placement="overhang"):
    """A random square per image set to 0 (the mean, once normalised); "overhang": its centre
    anywhere, as in the cutout paper; "inside": as in Page's code."""
    count, _, height, width = batch.shape
    low, overlap = (0, size - 1) if placement == "inside" else (-size // 2, size // 2)
    top = torch.randint(low, height - overlap, (count, 1, 1), device=batch.device)
    left = torch.randint(low, width - overlap, (count, 1, 1), device=batch.device)
    rows = torch.arange(height, device=batch.device).view(1, -1, 1)
    columns = torch.arange(width, device=batch.device).view(1, 1, -1)
    inside = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
    return batch.masked_fill(inside.unsqueeze(1), 0)


def prepare_batch(images, labels, index, scale, shift, augment="none"):
    """Cut one batch from uint8 tensors already on the device, augment and normalise it."""
    crop, flip, cutout_placement = AUGMENTATIONS[augment]
    index = index.to(images.device, non_blocking=True)
    batch = images.index_select(0, index)
    if crop:
        batch = random_crop(batch, border=crop)
    if flip:
        batch = random_flip(batch)
    # straight into the channels_last layout the models use: saves a copy per step
    normalised = torch.empty(batch.shape, device=batch.device, memory_format=torch.channels_last)
    batch = torch.addcmul(shift, batch.float(), scale, out=normalised)
    if cutout_placement:
        batch = cutout(batch, placement=cutout_placement)
    return batch, labels.index_select(0, index)
