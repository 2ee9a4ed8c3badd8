"""Standard FID and Inception Score with InceptionV3 from ``torch-fidelity``, from local weights only.

The network is ``torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3``
(the TensorFlow FID Inception, bit-compatible with the reference implementations), built
from a weights file given with ``--inception-weights PATH`` (e.g. torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``); nothing is downloaded.  Images in [-1, 1]
become uint8 RGB (grey images repeated over 3 channels); the network resizes them to 299x299.

* **FID**: :func:`sdm.train.fid.frechet_distance` on the 2048-d pool features.
* **IS**: ``exp(E_x KL(p(y|x) || p(y)))`` on the 1008 unbiased logits, mean and std over
  ``splits`` splits (torch-fidelity's ``isc_features_to_metric``).

The weights file is first read with ``torch.load(weights_only=True)`` (the library itself
reads it with ``weights_only=False``, which would execute a malicious pickle), so only a
plain tensor dictionary reaches the library.  A file whose keys or shapes do not match the
network is a one-line :class:`InceptionWeightsError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sdm.errors import SDMError

FEATURES = ("2048", "logits_unbiased")


class InceptionWeightsError(SDMError):
    """Unusable Inception weights; the message names the file."""


def _extractor_class():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise InceptionWeightsError(f"--inception-weights needs the torch-fidelity package ({e})") from None
    return FeatureExtractorInceptionV3


def _check_weights_file(path: Path) -> dict:
    if not path.exists():
        raise InceptionWeightsError(f"{path}: no such file")
    if path.is_dir():
        raise InceptionWeightsError(f"{path}: is a directory, expected an InceptionV3 weights file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InceptionWeightsError(f"{path}: refused to load: not a plain tensor file (unsafe pickle)") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InceptionWeightsError(f"{path}: not a readable weights file ({msg[:160]})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InceptionWeightsError(f"{path}: not InceptionV3 weights (expected a state dict of tensors)")
    return sd


def _describe_mismatch(text: str) -> str:
    """One line out of ``load_state_dict``'s multi-line error."""
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: ([^\n]*)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: ([^\n]*)")):
        m = re.search(pattern, text)
        names = re.findall(r'"([^"]+)"', m.group(1)) if m else []
        if names:
            parts.append(f"{len(names)} {label} keys (e.g. {names[0]})")
    sizes = re.findall(r"size mismatch for ([^:]+):", text)
    if sizes:
        parts.append(f"{len(sizes)} tensors of the wrong shape (e.g. {sizes[0]})")
    return ", ".join(parts) or (text.strip().splitlines() or ["keys or shapes do not match"])[0][:200]


def load_inception(weights: str | os.PathLike, device: str = "cpu"):
    """The torch-fidelity InceptionV3 feature extractor (pool ``2048`` + ``logits_unbiased``) from ``weights``."""
    path = Path(weights)
    _check_weights_file(path)
    cls = _extractor_class()
    try:
        net = cls("inception-v3-compat", list(FEATURES), feature_extractor_weights_path=str(path))
    except RuntimeError as e:  # load_state_dict: missing / unexpected keys, size mismatches
        raise InceptionWeightsError(f"{path}: not InceptionV3 weights for torch-fidelity: "
                                    f"{_describe_mismatch(str(e))}") from None
    return net.to(device).eval()


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float ``[N, C, H, W]`` -> uint8 ``[N, 3, H, W]`` (grey repeated to RGB)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(net, images: torch.Tensor, batch_size: int = 50, device: str = "cpu",
                       progress: bool = True, desc: str = "inception") -> tuple[torch.Tensor, torch.Tensor]:
    """``(pool features [N, 2048], unbiased logits [N, 1008])`` of images in [-1, 1]."""
    pools, logits = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        p, z = net(to_uint8_rgb(images[i:i + batch_size]).to(device))
        pools.append(p.cpu())
        logits.append(z.cpu())
    return torch.cat(pools), torch.cat(logits)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))): ``(mean, std)`` over ``splits`` splits (at least two samples each)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    r = isc_features_to_metric(logits, splits=max(1, min(splits, len(logits) // 2)), shuffle=True, rng_seed=seed)
    return r[KEY_METRIC_ISC_MEAN], r[KEY_METRIC_ISC_STD]


def random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a randomly initialised InceptionV3 state dict of the right keys and shapes to ``path``.

    For testing the Inception code path where the real weights cannot be downloaded: conv and
    linear weights ~ N(0, 2 / fan_in) (He), biases 0, BatchNorm identity.  The file loads through
    :func:`load_inception` exactly like real weights; its FID/IS values mean nothing.
    """
    cls = _extractor_class()

    class _Unloaded(cls):  # build the architecture without reading (or downloading) weights
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        empty = Path(d) / "empty.pt"
        torch.save({}, empty)
        net = _Unloaded("shape-only", list(FEATURES), feature_extractor_weights_path=str(empty))
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var") or (k.endswith(".bn.weight")):
            sd[k] = torch.ones_like(v)
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros_like(v)
        elif v.dim() >= 2:
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=gen) * np.sqrt(2.0 / fan_in)
        else:  # biases, running means
            sd[k] = torch.zeros_like(v)
    path = Path(path)
    torch.save(sd, path)
    return path


__all__ = ["InceptionWeightsError", "load_inception", "inception_features", "inception_score", "to_uint8_rgb",
           "random_inception_weights"]
