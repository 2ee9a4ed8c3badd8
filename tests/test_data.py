"""Tests for sdm.train.data: every source, every rejection path, and the batch stream."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from sdm.train.data import DataError, ImageDataset, infinite_loader, load_dataset

# --------------------------------------------------------------------------- writers


def write_idx(path, array: np.ndarray, magic: int | None = None, compress: bool = False):
    """Write a uint8 IDX file (big-endian header: magic, then one uint32 per dimension)."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    blob = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)


def write_mnist(folder, n=12, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return images, labels


def write_cifar(folder, per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    all_data, all_labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": b"training batch", b"data": data, b"labels": labels,
                 b"filenames": [b"img%d.png" % j for j in range(per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        all_data.append(data)
        all_labels += labels
    return np.concatenate(all_data), np.array(all_labels)


def tiny_dataset(n=10, hflip=False):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    images[:, :, :, 0] = 255  # left column marks orientation, for flip checks
    return ImageDataset(images, name="tiny", hflip=hflip)


def sample_ids(batch: torch.Tensor) -> list[int]:
    """Recover tiny_dataset indices from a float batch (pixel [1, 1] holds the index)."""
    return torch.round((batch[:, 0, 1, 1] + 1) * 127.5).long().tolist()


# --------------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def bundled():
    return load_dataset("mnist-bundled")


def test_bundled_mnist(bundled):
    assert len(bundled) == 5000
    assert bundled.images_uint8.shape == (5000, 1, 32, 32)
    assert bundled.images_uint8.dtype == torch.uint8
    assert (bundled.channels, bundled.image_size, bundled.name) == (1, 32, "mnist-bundled")
    assert bundled.hflip is False
    x = bundled[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() > 0.9
    assert bundled.labels.dtype == torch.long
    assert set(bundled.labels.tolist()) == set(range(10))


def test_bundled_mnist_other_size():
    ds = load_dataset("mnist-bundled", image_size=28)
    assert ds.images_uint8.shape == (5000, 1, 28, 28)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist", "kmnist"])
def test_idx_round_trip(tmp_path, kind, compress):
    images, labels = write_mnist(tmp_path, compress=compress)
    ds = load_dataset(f"{kind}:{tmp_path}", image_size=28)
    assert ds.name == kind
    assert torch.equal(ds.images_uint8, torch.from_numpy(images)[:, None])
    assert ds.labels.tolist() == labels.tolist()
    assert load_dataset(f"{kind}:{tmp_path}").images_uint8.shape == (12, 1, 32, 32)


def test_idx_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images, _ = write_mnist(raw, n=3)
    ds = load_dataset(f"fashion-mnist:{tmp_path}", image_size=28)
    assert torch.equal(ds.images_uint8[:, 0], torch.from_numpy(images))


@pytest.mark.parametrize("torchvision_layout", [False, True])
def test_emnist_letters_upright_and_zero_based(tmp_path, torchvision_layout):
    """EMNIST stores images transposed and letters as 1..26: read upright, labels 0..25."""
    folder = tmp_path / "EMNIST" / "raw" if torchvision_layout else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    upright = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    letters = np.array([1, 26, 5, 12], np.uint8)
    write_idx(folder / "emnist-letters-train-images-idx3-ubyte.gz", upright.transpose(0, 2, 1).copy(), compress=True)
    write_idx(folder / "emnist-letters-train-labels-idx1-ubyte", letters)
    ds = load_dataset(f"emnist-letters:{tmp_path}", image_size=28)
    assert ds.name == "emnist-letters"
    assert torch.equal(ds.images_uint8[:, 0], torch.from_numpy(upright))
    assert ds.labels.tolist() == [0, 25, 4, 11]


def test_emnist_letters_refuses_zero_label(tmp_path):
    write_idx(tmp_path / "emnist-letters-train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "emnist-letters-train-labels-idx1-ubyte", np.array([0, 3], np.uint8))
    with pytest.raises(DataError, match="emnist-letters-train-labels-idx1-ubyte: labels start at 1"):
        load_dataset(f"emnist-letters:{tmp_path}", image_size=28)


@pytest.mark.parametrize("parent", [False, True])
def test_cifar10(tmp_path, parent):
    folder = tmp_path / "cifar-10-batches-py"
    data, labels = write_cifar(folder)
    ds = load_dataset(f"cifar10:{tmp_path if parent else folder}")
    assert ds.images_uint8.shape == (20, 3, 32, 32)
    assert (ds.channels, ds.image_size, ds.name, ds.hflip) == (3, 32, "cifar10", True)
    # First 1024 bytes of a row are the red plane, row-major.
    assert torch.equal(ds.images_uint8[0, 0].flatten(), torch.from_numpy(data[0, :1024]))
    assert torch.equal(ds.images_uint8[7, 2].flatten(), torch.from_numpy(data[7, 2048:]))
    assert ds.labels.tolist() == labels.tolist()
    assert load_dataset(f"cifar10:{folder}", hflip=False).hflip is False
    assert load_dataset(f"cifar10:{folder}", image_size=16).images_uint8.shape == (20, 3, 16, 16)


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    write_cifar(tmp_path)
    sentinel = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
             b"payload": _Exploit(f"touch {sentinel}")}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="forbidden class") as err:
        load_dataset(f"cifar10:{tmp_path}")
    assert "data_batch_3" in str(err.value) and "system" in str(err.value)
    assert not sentinel.exists()


def test_object_array_pickle_is_refused(tmp_path):
    write_cifar(tmp_path)
    batch = {b"data": np.array([None], dtype=object), b"labels": [0]}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="data_batch_1.*object dtypes are not allowed"):
        load_dataset(f"cifar10:{tmp_path}")


def test_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = (255, 0, 0)  # the centered square is pure red
    Image.fromarray(wide).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "sub" / "b.PNG")
    Image.fromarray(np.full((16, 16), 30, np.uint8)).save(tmp_path / "sub" / "c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert ds.images_uint8.shape == (3, 3, 16, 16)
    assert ds.labels is None and ds.name == "folder" and ds.hflip is False
    red = ds.images_uint8[0]
    assert (red[0] == 255).all() and (red[1:] == 0).all()
    gray = load_dataset(f"folder:{tmp_path}", image_size=8, channels=1)
    assert gray.images_uint8.shape == (3, 1, 8, 8) and gray.channels == 1
    assert (gray.images_uint8[1] == 128).all()


# --------------------------------------------------------------------------- bad input


def test_unknown_spec_lists_valid_forms():
    with pytest.raises(DataError, match="cifar10:DIR"):
        load_dataset("imagenet:/data")
    with pytest.raises(DataError, match="unknown dataset spec"):
        load_dataset("mnist")  # needs a DIR


@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist", "cifar10", "folder"])
def test_missing_dir(tmp_path, kind):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as err:
        load_dataset(f"{kind}:{missing}")
    assert str(missing) in str(err.value)


def test_missing_idx_files(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as err:
        load_dataset(f"mnist:{tmp_path}")
    assert str(tmp_path) in str(err.value) and "train-images" not in str(err.value)
    with pytest.raises(DataError, match="file not found"):
        load_dataset(f"mnist:{tmp_path}", root_check=False)


def test_missing_cifar_batches(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4") as err:
        load_dataset(f"cifar10:{tmp_path}")
    assert str(tmp_path) in str(err.value)


def test_bad_idx_magic(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((12, 28, 28), np.uint8))
    with pytest.raises(DataError, match="bad IDX magic 0x00000803") as err:
        load_dataset(f"mnist:{tmp_path}")
    assert "train-labels-idx1-ubyte" in str(err.value)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_idx(tmp_path, compress):
    write_mnist(tmp_path, compress=compress)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    blob = (tmp_path / name).read_bytes()
    raw = gzip.decompress(blob) if compress else blob
    raw = raw[:-100]
    (tmp_path / name).write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError, match="data bytes") as err:
        load_dataset(f"mnist:{tmp_path}")
    assert name in str(err.value)
    (tmp_path / name).write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="truncated IDX header"):
        load_dataset(f"mnist:{tmp_path}")


def test_idx_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="5 labels for 12 images"):
        load_dataset(f"mnist:{tmp_path}")


def test_corrupt_cifar_pickle(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset(f"cifar10:{tmp_path}")


def test_undecodable_image(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError, match="cannot decode image") as err:
        load_dataset(f"folder:{tmp_path}")
    assert "broken.jpg" in str(err.value)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no image files") as err:
        load_dataset(f"folder:{tmp_path}")
    assert str(tmp_path) in str(err.value)


def test_bad_options():
    with pytest.raises(DataError, match="image_size"):
        load_dataset("mnist-bundled", image_size=0)
    with pytest.raises(DataError, match="channels"):
        load_dataset("mnist-bundled", channels=2)


# --------------------------------------------------------------------------- batch stream


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_loader_reproducible():
    ds = tiny_dataset()
    a = take(infinite_loader(ds, 4, seed=3), 6)
    b = take(infinite_loader(ds, 4, seed=3), 6)
    c = take(infinite_loader(ds, 4, seed=4), 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert a[0].shape == (4, 1, 4, 4) and a[0].dtype == torch.float32


def test_loader_covers_each_epoch_once():
    ds = tiny_dataset(n=12)
    batches = take(infinite_loader(ds, 4, seed=0), 6)  # two epochs
    ids = [i for b in batches for i in sample_ids(b)]
    assert sorted(ids[:12]) == list(range(12)) and sorted(ids[12:]) == list(range(12))
    assert ids[:12] != ids[12:]  # reshuffled per epoch


def test_loader_ranks_are_disjoint_shards():
    ds = tiny_dataset(n=16)
    per_rank = [[i for b in take(infinite_loader(ds, 4, seed=1, rank=r, world_size=2), 2)
                 for i in sample_ids(b)] for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(16))
    with pytest.raises(ValueError):
        next(infinite_loader(ds, 4, seed=1, rank=2, world_size=2))


def test_loader_start_batch_matches_consumption():
    ds = tiny_dataset(n=10, hflip=True)  # 10 % 4 != 0: batches straddle epochs
    for rank in range(2):
        full = take(infinite_loader(ds, 4, seed=7, rank=rank, world_size=2), 9)
        resumed = take(infinite_loader(ds, 4, seed=7, rank=rank, world_size=2, start_batch=5), 4)
        assert all(torch.equal(x, y) for x, y in zip(full[5:], resumed))


def test_loader_hflip():
    plain = take(infinite_loader(tiny_dataset(n=64), 64, seed=0), 1)[0]
    flipped = take(infinite_loader(tiny_dataset(n=64, hflip=True), 64, seed=0), 1)[0]
    assert (plain[:, 0, :, 0] == 1).all()  # marker column stays left without hflip
    left = flipped[:, 0, 0, 0] == 1
    right = flipped[:, 0, 0, -1] == 1
    assert (left ^ right).all() and 10 < int(right.sum()) < 54
    assert torch.equal(flipped[right].flip(-1), plain[right])


def test_loader_small_dataset_fills_batches():
    batch = next(infinite_loader(tiny_dataset(n=3), 8, seed=0))
    assert batch.shape[0] == 8 and set(sample_ids(batch)) == {0, 1, 2}
