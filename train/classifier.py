"""The small CNN classifier behind the offline sample-quality metric of ``sdm eval``.

Standard FID needs the pretrained InceptionV3, which cannot be downloaded everywhere.
The offline metric uses a small classifier trained by the project on the same labelled
data set as the diffusion model (``sdm train-classifier``) instead:

* **classifier FID**: the Fréchet distance (:func:`sdm.train.fid.frechet_distance`)
  between the penultimate-layer features (128-d, after ReLU) of generated samples and
  those of the whole data set;
* **confidence**: the mean over samples of the maximum softmax probability,
  ``(1/n) sum_i max_k softmax(z_i)_k`` — recognisable digits score close to the value of
  real images, noise close to ``1/K``;
* **class histogram** and its entropy ``H = -sum_k p_k ln p_k`` (``ln K`` = every class
  equally often; a collapse onto few classes lowers it).

The classifier file is an ordinary safe checkpoint (``format: sdm-checkpoint``, plain
tensors, loaded with ``weights_only=True``) with ``kind: "classifier"``. It records the
data spec, image size, channels, number of classes, held-out accuracy and the data set's
reference feature statistics (mean, covariance), computed once at training time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from sdm.errors import ConfigError

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import strict_from_dict
from .data import LABELLED_SPECS, DataError, ImageDataset
from .fid import feature_statistics

KIND = "classifier"


@dataclasses.dataclass
class ClassifierConfig:
    img_ch: int = 1
    img_size: int = 32
    num_classes: int = 10
    width: int = 32  # channels of the first conv; the second has 2 * width
    feature_dim: int = 128

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        return strict_from_dict(cls, d, "classifier")


class SmallCNN(nn.Module):
    """conv3x3(C, w) -> BN -> ReLU -> maxpool2 -> conv3x3(w, 2w) -> BN -> ReLU -> maxpool2 -> avgpool to 4x4
    -> linear(32w, 128) -> ReLU [= features] -> dropout -> linear(128, K) [= logits]."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(cfg.img_ch, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.fc1 = nn.Linear(2 * w * 16, cfg.feature_dim)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.features(x)))


def _images(dataset_or_tensor) -> torch.Tensor:
    """Float images in [-1, 1]: an :class:`ImageDataset`'s whole content, or a tensor as is."""
    if isinstance(dataset_or_tensor, ImageDataset):
        return dataset_or_tensor.images_uint8.to(torch.float32).div(127.5).sub(1.0)
    return dataset_or_tensor


def holdout_split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, test)`` of a seeded random split; ``holdout`` is the test fraction."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * holdout)))
    return perm[n_test:], perm[:n_test]


def require_labels(dataset: ImageDataset, spec: str) -> torch.Tensor:
    if dataset.labels is None:
        raise DataError(f"data set {spec!r} has no class labels; the offline metric needs a labelled data set "
                        f"({', '.join(LABELLED_SPECS)}) to train its classifier")
    return dataset.labels


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
             device: str = "cpu") -> float:
    model.eval()
    pred = _batched(model, images, batch_size, device).argmax(1)
    return float((pred == labels).float().mean())


def train_classifier(dataset: ImageDataset, spec: str, steps: int = 400, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0, holdout: float = 0.1, width: int = 32, device: str = "cpu",
                     progress: bool = True, max_train: int | None = None) -> tuple[SmallCNN, dict[str, Any]]:
    """Train :class:`SmallCNN` with Adam on a seeded random split; returns ``(model, info)``.

    ``info`` has the held-out accuracy (``test_accuracy``, on a fraction ``holdout`` of the
    data never seen in training), the training accuracy, sizes and time.  ``max_train``
    caps the number of training images (tests).
    """
    if steps < 1:
        raise ConfigError("--steps must be >= 1")
    labels = require_labels(dataset, spec)
    num_classes = int(labels.max()) + 1
    images = _images(dataset)
    train_idx, test_idx = holdout_split(len(images), holdout, seed)
    if max_train is not None:
        train_idx = train_idx[:max_train]
    torch.manual_seed(seed)
    cfg = ClassifierConfig(img_ch=dataset.channels, img_size=dataset.image_size, num_classes=num_classes,
                           width=width)
    model = SmallCNN(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="train-classifier", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        idx = train_idx[torch.randint(len(train_idx), (batch_size,), generator=gen)]
        x, y = images[idx].to(device), labels[idx].to(device)
        # light augmentation: random shifts of up to 2 px, so the features are not tied to exact positions
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    seconds = time.perf_counter() - t0
    model.eval()
    info = {
        "test_accuracy": accuracy(model, images[test_idx], labels[test_idx], device=device),
        "train_accuracy": accuracy(model, images[train_idx[:2000]], labels[train_idx[:2000]], device=device),
        "n_train": int(len(train_idx)), "n_test": int(len(test_idx)), "steps": steps, "batch_size": batch_size,
        "lr": lr, "seed": seed, "holdout": holdout, "seconds": seconds,
    }
    return model, info


@torch.no_grad()
def classifier_features(model: SmallCNN, images, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """Penultimate-layer features ``[n, 128]`` of images in [-1, 1] (or an :class:`ImageDataset`)."""
    model.eval()
    return _batched(model.features, _images(images), batch_size, device)


@torch.no_grad()
def classifier_scores(model: SmallCNN, images, batch_size: int = 256, device: str = "cpu") -> dict[str, Any]:
    """Confidence and class statistics of images in [-1, 1]:
    ``confidence = mean_i max_k softmax(z_i)_k``, the predicted-class histogram ``p_k`` (fractions)
    and its entropy ``-sum_k p_k ln p_k`` (``ln K`` when every class is equally frequent)."""
    model.eval()
    probs = _batched(model, _images(images), batch_size, device).softmax(1)
    conf, pred = probs.max(1)
    hist = torch.bincount(pred, minlength=model.cfg.num_classes).double() / len(pred)
    nz = hist[hist > 0]
    return {"confidence": float(conf.mean()), "class_histogram": [float(v) for v in hist],
            "class_entropy": float(-(nz * nz.log()).sum()), "max_class_entropy": math.log(model.cfg.num_classes)}


def reference_statistics(model: SmallCNN, dataset: ImageDataset, device: str = "cpu") -> dict[str, Any]:
    """Feature mean/covariance and the scores of the whole data set: the reference of classifier FID."""
    mu, sigma = feature_statistics(classifier_features(model, dataset, device=device))
    scores = classifier_scores(model, dataset, device=device)
    return {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma), "n": len(dataset),
            "confidence": scores["confidence"], "class_entropy": scores["class_entropy"]}


def save_classifier(path: str | os.PathLike, model: SmallCNN, spec: str, info: dict, reference: dict) -> Path:
    """Atomic, safe checkpoint (plain tensors and numbers only)."""
    return save_checkpoint(path, {
        "kind": KIND,
        "model_config": model.cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "data": {"spec": spec, "channels": model.cfg.img_ch, "image_size": model.cfg.img_size,
                 "num_classes": model.cfg.num_classes},
        "train": {k: v for k, v in info.items()},
        "test_accuracy": info["test_accuracy"],
        "reference": reference,
    })


def load_classifier(path: str | os.PathLike, device: str = "cpu") -> tuple[SmallCNN, dict[str, Any]]:
    """``(model, checkpoint)``; a file that is not a classifier checkpoint is a one-line :class:`CheckpointError`."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a classifier checkpoint (write one with `sdm train-classifier`)")
    try:
        model = SmallCNN(ClassifierConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        ref = ckpt["reference"]
        d = model.cfg.feature_dim
        if tuple(ref["mu"].shape) != (d,) or tuple(ref["sigma"].shape) != (d, d):
            raise ValueError("reference statistics do not match the feature size")
        for k in ("spec", "channels", "image_size"):
            ckpt["data"][k]
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: damaged classifier checkpoint ({first[:200]})") from None
    return model.to(device).eval(), ckpt


__all__ = ["ClassifierConfig", "SmallCNN", "train_classifier", "classifier_features", "classifier_scores",
           "reference_statistics", "save_classifier", "load_classifier", "holdout_split", "accuracy"]
