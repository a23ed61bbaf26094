"""CIFAR-10 from disk to uint8 tensors, once; then batches cut by index, on the device.

Data flows one way: files -> ``Dataset`` (uint8 N x 3 x 32 x 32 tensors and int64 labels)
-> ``batch_order`` (which images make each batch) -> ``prepare_batch`` (float, normalised,
on the training device, augmented there: random crop, flip and cutout for the whole batch).
"""
import contextlib
import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import UserError
from .results import CLASSES

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DEFAULT_ROOT = "./data"
DOWNLOAD_LOCK = ".cifarkit-download.lock"  # in the download root while one process fetches
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
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
class OnDevice:
    """The data set on the training device, still uint8, and the ``scale`` and ``shift``
    that normalise it: what every training step and every test pass reads."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


def data_fingerprint(dataset):
    """A digest of every image and label: a copy replaced in place (same path, same counts)
    is told from the one earlier results were trained on. About half a second for all of
    CIFAR-10."""
    digest = hashlib.sha256()
    for tensor in (dataset.train_images, dataset.train_labels, dataset.test_images,
                   dataset.test_labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def to_device(dataset, normalization, device):
    """Every image on the training device as uint8, once; batches are cut from these."""
    scale, shift = normalizer(*normalization, device=device)
    return OnDevice(dataset.train_images.to(device), dataset.train_labels.to(device),
                    dataset.test_images.to(device), dataset.test_labels.to(device),
                    scale, shift)


def load_cifar10(data_dir=None, subset=None, seed=0, download_root=DEFAULT_ROOT):
    """Decode CIFAR-10 once into uint8 tensors.

    ``data_dir=None`` lets torchvision download (and checksum) the data into ``download_root``.
    ``subset=N`` keeps N training images and a proportional slice of the test set, both
    class-balanced and chosen with ``seed``; from image folders only those files are decoded.
    """
    if data_dir is None:
        return _maybe_subset(_load_with_torchvision(download_root), subset, seed)
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {root}: no such folder.\n{HOW_TO_PROVIDE}")
    if (root / "cifar-10-batches-py").is_dir():
        return _maybe_subset(_load_pickled_batches(root / "cifar-10-batches-py"), subset, seed)
    if (root / "cifar-10-python.tar.gz").is_file():
        return _maybe_subset(_load_tar_archive(root / "cifar-10-python.tar.gz"), subset, seed)
    if (root / "train").is_dir() or (root / "test").is_dir():
        return _load_image_folders(root, subset, seed)
    raise DataError(f"--data-dir {root} holds no CIFAR-10 copy in a layout this kit reads.\n"
                    f"{HOW_TO_PROVIDE}")


def _load_with_torchvision(download_root):
    """torchvision downloads and checks the archive; one process per machine at a time (under
    torchrun every rank gets here: the first downloads, the others then find the files)."""
    import torchvision  # imported here: only the download path needs it
    from torchvision.datasets.utils import check_integrity

    root = Path(download_root)
    try:
        with _download_lock(root):
            for train in (True, False):
                torchvision.datasets.CIFAR10(root=root, train=train, download=True)
    except Exception as error:  # no network, refused, corrupt download: all end the same way
        _remove_if_only_the_lock(root)
        folder = root / "cifar-10-batches-py"
        damaged = [name for name, md5 in torchvision.datasets.CIFAR10.train_list
                   + torchvision.datasets.CIFAR10.test_list
                   if not check_integrity(str(folder / name), md5)]
        if folder.is_dir() and damaged:
            raise DataError(
                f"{folder.absolute()}: a copy of CIFAR-10 is there but damaged ("
                f"{', '.join(damaged)} missing or failing torchvision's checksum), and "
                f"downloading a fresh one failed ({type(error).__name__}: {error}). Delete that "
                f"folder to download again, or use another copy.\n{HOW_TO_PROVIDE}") from None
        raise DataError(
            f"Could not find or download CIFAR-10 in {root.absolute()} "
            f"({type(error).__name__}: {error}).\n{HOW_TO_PROVIDE}") from None
    return _load_pickled_batches(root / "cifar-10-batches-py")


def _remove_if_only_the_lock(root):
    """A download that failed at once leaves no empty ./data with a lock file behind."""
    lock = root / DOWNLOAD_LOCK
    if [entry.name for entry in root.iterdir()] == [DOWNLOAD_LOCK]:
        lock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            root.rmdir()


@contextlib.contextmanager
def _download_lock(root):
    """An exclusive lock on ``root`` while CIFAR-10 is fetched there, so that processes on
    one machine never download into the same folder at once (a kernel lock: it dies with
    the process)."""
    root.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # Windows
        yield
        return
    with open(root / DOWNLOAD_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's pickled batches (dicts of lists and numpy arrays) and refuses any
    other object, so a doctored batch file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 "
                                         f"batch never holds")
        return super().find_class(module, name)


def _unpickle_batch(raw_bytes, name):
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw_bytes), encoding="latin1").load()
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as error:
        raise DataError(f"{name}: not a readable CIFAR-10 batch file "
                        f"({type(error).__name__}: {error}).") from None
    if len(images) != len(labels):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels.")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{name}: labels outside 0-9 (found {labels.min()}..{labels.max()}).")
    return images, labels


def _dataset_from_batches(read_batch, source):
    """``read_batch(name) -> bytes`` for each of the six batch files."""
    train = [_unpickle_batch(read_batch(name), name) for name in TRAIN_BATCHES]
    test_images, test_labels = _unpickle_batch(read_batch(TEST_BATCH), TEST_BATCH)
    return Dataset(
        train_images=torch.from_numpy(np.concatenate([images for images, _ in train])),
        train_labels=torch.from_numpy(np.concatenate([labels for _, labels in train])),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels),
        source=source,
    )


def _load_pickled_batches(folder):
    def read_batch(name):
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: batch file missing from the CIFAR-10 folder {folder}.")
        return path.read_bytes()

    return _dataset_from_batches(read_batch, f"pickled batches in {folder}")


def _load_tar_archive(archive_path):
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            contents = {Path(member.name).name: archive.extractfile(member).read()
                        for member in archive.getmembers() if member.isfile()}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{archive_path}: not a readable .tar.gz archive ({error}).") from None

    def read_batch(name):
        if name not in contents:
            raise DataError(f"{archive_path}: the archive has no {name}.")
        return contents[name]

    return _dataset_from_batches(read_batch, f"archive {archive_path}")


def _list_image_folder(split_dir):
    """[(path, label)] for one split of an image-folder tree; refuses a malformed tree."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder missing (an image-folder copy needs train/ and "
                        f"test/, each with the ten class folders).")
    found = sorted(entry.name for entry in _listing(split_dir) if entry.is_dir())
    extra = [name for name in found if name not in CLASSES]
    if extra:
        raise DataError(f"{split_dir}: folders that are not CIFAR-10 classes: {', '.join(extra)} "
                        f"(expected exactly {', '.join(CLASSES)}).")
    files = []
    for label, name in enumerate(CLASSES):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise DataError(f"{class_dir}: class folder missing.")
        images = sorted(path for path in _listing(class_dir)
                        if path.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{class_dir}: class folder holds no .png or .jpg images.")
        files += [(path, label) for path in images]
    return files


def _listing(folder):
    """The entries of ``folder``; one that may not be read is named, with the remedy."""
    try:
        return list(folder.iterdir())
    except OSError as error:
        raise DataError(f"{folder}: cannot be read ({error.strerror or error}). Give yourself "
                        f"read access to it (chmod -R u+rX), or use another copy.") from None


def _decode_image(path):
    from PIL import Image  # Pillow comes with torchvision

    try:
        with Image.open(path) as image:  # reads the header only: check before decoding
            size, mode = image.size, image.mode
            if size != (32, 32) or mode != "RGB":
                raise DataError(f"{path}: a {size[0]}x{size[1]} {mode} image; CIFAR-10 images "
                                f"are 32x32 RGB.")
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode this image ({error}).") from None
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def _decode_files(files, index):
    images = torch.stack([_decode_image(files[i][0]) for i in index.tolist()])
    return images, torch.tensor([files[i][1] for i in index.tolist()], dtype=torch.int64)


def _load_image_folders(root, subset, seed):
    train_files = _list_image_folder(root / "train")
    test_files = _list_image_folder(root / "test")
    train_labels = torch.tensor([label for _, label in train_files])
    test_labels = torch.tensor([label for _, label in test_files])
    train_index, test_index = subset_indices(train_labels, test_labels, subset, seed)
    return Dataset(*_decode_files(train_files, train_index), *_decode_files(test_files, test_index),
                   source=f"image folders in {root}" + _subset_note(subset, seed))


def _balanced_indices(labels, count, seed, subset, split):
    """Indices of ``count`` items of one split, spread evenly over the classes, chosen with
    ``seed``; ``subset`` (what the user typed) and ``split`` are for the message."""
    generator = torch.Generator().manual_seed(seed)
    per_class = [count // len(CLASSES) + (1 if c < count % len(CLASSES) else 0)
                 for c in range(len(CLASSES))]
    chosen = []
    for label, wanted in enumerate(per_class):
        members = torch.nonzero(labels == label).flatten()
        if wanted > len(members):
            raise UserError(f"--subset {subset}: needs {wanted} {split} images of class "
                            f"{CLASSES[label]} ({count} {split} images in all, spread evenly "
                            f"over the classes), but this copy's {split} set has only "
                            f"{len(members)}. Choose a smaller --subset.")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
    return torch.sort(torch.cat(chosen)).values


def subset_indices(train_labels, test_labels, subset, seed):
    """(train, test) indices: everything, or ``subset`` training images and a test slice in
    the same proportion, both class-balanced."""
    if subset is None:
        return torch.arange(len(train_labels)), torch.arange(len(test_labels))
    if not 10 <= subset <= len(train_labels):
        raise UserError(f"--subset {subset}: must be between 10 and the {len(train_labels)} "
                        f"training images of this copy.")
    test_count = max(10, round(subset * len(test_labels) / len(train_labels)))
    return (_balanced_indices(train_labels, subset, seed, subset, "training"),
            _balanced_indices(test_labels, test_count, seed + 1, subset, "test"))


def _subset_note(subset, seed):
    return "" if subset is None else f" (class-balanced subset, seed {seed})"


def _maybe_subset(dataset, subset, seed):
    if subset is None:
        return dataset
    train_index, test_index = subset_indices(dataset.train_labels, dataset.test_labels,
                                             subset, seed)
    return Dataset(dataset.train_images[train_index], dataset.train_labels[train_index],
                   dataset.test_images[test_index], dataset.test_labels[test_index],
                   source=dataset.source + _subset_note(subset, seed))


def normalizer(mean, std, device):
    """(scale, shift) so that ``uint8 * scale + shift`` is ``(x / 255 - mean) / std``."""
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def batch_order(count, batch_size, seed, epoch):
    """The shuffled batches of one epoch: a list of index tensors, a function of (seed, epoch).

    Deriving the order from the epoch number, not from a running generator, is what lets a
    resumed run see exactly the batches an uninterrupted one would.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).split(batch_size)


@dataclass(frozen=True)
class Augmentation:
    """What one ``augment`` value does to each training batch, in this order."""
    crop: Optional[str]    # random crop of the padded image: its border "zeros" or "reflect"
    flip: bool             # mirror left-right with probability 1/2
    cutout: Optional[str]  # one square blanked: "overhang" (may hang over the edge) or "inside"


# The first four are the kit's original values, kept as they were so that earlier results stay
# comparable; the "reflect-" ones are David Page's DAWNBench augmentation (crop of the
# reflect-padded image, flip, 8x8 cutout kept inside the image).
AUGMENTATIONS = {
    "none": Augmentation(crop=None, flip=False, cutout=None),
    "flip": Augmentation(crop=None, flip=True, cutout=None),
    "crop+flip": Augmentation(crop="zeros", flip=True, cutout=None),
    "crop+flip+cutout": Augmentation(crop="zeros", flip=True, cutout="overhang"),
    "reflect-crop+flip": Augmentation(crop="reflect", flip=True, cutout=None),
    "reflect-crop+flip+inside-cutout": Augmentation(crop="reflect", flip=True, cutout="inside"),
}
CROP_PADDING = 4   # pixels of padding around each image before a random 32x32 crop
CUTOUT_SIZE = 8    # side of the square that cutout blanks (to the mean: 0 after normalising)


def random_crop(batch, padding=CROP_PADDING, border="zeros"):
    """Each image of a batch shifted by up to ``padding`` pixels: the same as torchvision's
    RandomCrop(32, padding) per image, done for the whole batch at once. ``border`` "zeros"
    fills the uncovered edge with 0 (padding_mode "constant"); "reflect" mirrors the image
    there without repeating the edge pixel (padding_mode "reflect"). The mirroring is done on
    the gather indices, not by padding, so it needs no uint8 reflect-pad kernel on any device
    and costs no more than the zero-padded crop."""
    count, _, height, width = batch.shape
    top = torch.randint(0, 2 * padding + 1, (count, 1, 1), device=batch.device)
    left = torch.randint(0, 2 * padding + 1, (count, 1, 1), device=batch.device)
    rows = top + torch.arange(height, device=batch.device).view(1, -1, 1)       # (count, h, 1)
    columns = left + torch.arange(width, device=batch.device).view(1, 1, -1)    # (count, 1, w)
    if border == "reflect":  # rows and columns of the padded image -> of the image itself
        source = batch
        rows, columns = _reflect(rows - padding, height), _reflect(columns - padding, width)
    else:
        source = torch.nn.functional.pad(batch, (padding,) * 4)
    flat = (rows * source.shape[3] + columns).flatten(1)        # (count, height * width)
    pixels = source.flatten(2).gather(2, flat.unsqueeze(1).expand(-1, batch.shape[1], -1))
    return pixels.view_as(batch)


def _reflect(index, size):
    """``index`` (from -(size - 1) to 2 * (size - 1)) mirrored into 0 .. size - 1 at both edges:
    -1 -> 1, size -> size - 2."""
    return (size - 1) - ((size - 1) - index.abs()).abs()


def random_flip(batch):
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(len(batch), device=batch.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)


def cutout(batch, size=CUTOUT_SIZE, placement="overhang"):
    """One random ``size`` x ``size`` square per image set to 0 (the mean, once normalised).
    "overhang": its centre anywhere in the image, so it may hang over the edge, as in the
    cutout paper; "inside": always whole and inside the image, as in Page's DAWNBench code."""
    count, _, height, width = batch.shape
    if placement == "inside":
        top = torch.randint(0, height - size + 1, (count, 1, 1), device=batch.device)
        left = torch.randint(0, width - size + 1, (count, 1, 1), device=batch.device)
    else:
        top = torch.randint(-size // 2, height - size // 2, (count, 1, 1), device=batch.device)
        left = torch.randint(-size // 2, width - size // 2, (count, 1, 1), device=batch.device)
    rows = torch.arange(height, device=batch.device).view(1, -1, 1)
    columns = torch.arange(width, device=batch.device).view(1, 1, -1)
    inside = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
    return batch.masked_fill(inside.unsqueeze(1), 0)


def prepare_batch(images, labels, index, scale, shift, augment="none"):
    """Cut one batch from uint8 tensors already on the device, augment it there (random crop,
    flip and cutout as AUGMENTATIONS[augment] says, for the whole batch at once) and
    normalise it."""
    steps = AUGMENTATIONS[augment]
    index = index.to(images.device, non_blocking=True)
    batch = images.index_select(0, index)
    if steps.crop:
        batch = random_crop(batch, border=steps.crop)
    if steps.flip:
        batch = random_flip(batch)
    # normalised straight into the channels_last layout the models use (runtime.place_model),
    # which saves a copy per step
    normalised = torch.empty(batch.shape, device=batch.device, memory_format=torch.channels_last)
    batch = torch.addcmul(shift, batch.float(), scale, out=normalised)
    if steps.cutout:
        batch = cutout(batch, placement=steps.cutout)
    return batch, labels.index_select(0, index)
