"""``sdm eval``: sample a checkpoint and score the samples.

Always the offline metric of :mod:`sdm.train.classifier` (classifier FID, confidence, class
entropy); with ``inception_weights`` also standard FID and Inception Score
(:mod:`sdm.train.inception`).  Samples come from :func:`sdm.train.sampling.generate`, the same
sampler as ``sdm sample``.  The result is a flat JSON-able dict: every number plus the exact
settings, so a results table can be built from the saved files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from sdm.errors import SDMError

from .checkpoint import load_checkpoint, uses_ema
from .data import LABELLED_SPECS, load_dataset
from .diffusion import GaussianDiffusion
from .fid import cached_statistics, feature_statistics, file_sha256, frechet_distance
from .moments import checkpoint_moments
from .sampling import generate, model_from_checkpoint
from .unet import SpikingUNet

if TYPE_CHECKING:
    from .classifier import SmallCNN


class EvalError(SDMError):
    """An evaluation that cannot run as asked; one line."""


class ImageFormat(Protocol):
    """What the metrics need to know of a generator: the images it makes (a UNetConfig or a VQSVAEConfig)."""

    img_size: int
    img_ch: int


def _normal_spec(spec: str) -> str:
    """``kind:DIR`` with DIR made absolute, so the same data set named two ways compares equal."""
    kind, sep, arg = spec.partition(":")
    return f"{kind}:{Path(arg).expanduser().resolve()}" if sep and arg else spec


def model_data_spec(ckpt: dict) -> str | None:
    return (ckpt.get("data") or {}).get("spec") or (ckpt.get("train_config") or {}).get("data")


def default_classifier_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).parent / "classifier.pt"


def checked_classifier(model_path: str | os.PathLike, classifier: str | os.PathLike | None, spec: str | None,
                       fmt: ImageFormat, device: str) -> tuple[Path, SmallCNN, dict[str, Any], str]:
    """The classifier of the offline metric: present, and made for this data set and image format.

    Returns ``(path, model, checkpoint, data spec)``; the spec is the classifier's own when
    neither ``--data`` nor the model's checkpoint names one."""
    from .classifier import load_classifier

    cls_path = Path(classifier) if classifier else default_classifier_path(model_path)
    if not cls_path.exists():
        how = f"sdm train-classifier --data {spec or 'SPEC'} --img-size {fmt.img_size} --out {cls_path}"
        raise EvalError(f"{cls_path}: no classifier for the offline metric; train one with `{how}` "
                        f"(or give --classifier PATH)")
    if spec and spec.partition(":")[0] == "folder":
        raise EvalError(f"data set {spec!r} has no class labels: the offline classifier metric needs a "
                        f"labelled data set ({', '.join(LABELLED_SPECS)})")
    clf, clf_ckpt = load_classifier(cls_path, device=device)
    cdata = clf_ckpt["data"]
    spec = spec or cdata["spec"]
    if _normal_spec(cdata["spec"]) != _normal_spec(spec):
        raise EvalError(f"{cls_path}: classifier was trained on {cdata['spec']!r}, not on {spec!r}")
    if (cdata["image_size"], cdata["channels"]) != (fmt.img_size, fmt.img_ch):
        raise EvalError(f"{cls_path}: classifier expects {cdata['channels']}x{cdata['image_size']}x"
                        f"{cdata['image_size']} images, the model makes {fmt.img_ch}x{fmt.img_size}x{fmt.img_size}")
    return cls_path, clf, clf_ckpt, spec


def _samples(model: SpikingUNet, diffusion: GaussianDiffusion, n: int, chain: dict[str, Any], seed: int,
             threshold_scale: float, batch_size: int, device: str, progress: bool) -> tuple[torch.Tensor, float]:
    """``(n samples on the CPU, seconds)`` with the sampler ``chain`` (generate's keywords); samples that
    are not finite are an error."""
    t0 = time.perf_counter()
    x = generate(model, diffusion, n, seed=seed, threshold_scale=threshold_scale, batch_size=batch_size,
                 device=device, progress=progress, **chain).cpu()
    seconds = time.perf_counter() - t0
    if not torch.isfinite(x).all():
        raise FloatingPointError("the samples contain NaN or infinity")
    return x, seconds


def offline_metrics(clf: SmallCNN, clf_ckpt: dict[str, Any], cls_path: Path, x: torch.Tensor,
                     device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(classifier section, metrics)`` of the result: classifier FID, confidence and class statistics."""
    from .classifier import classifier_features, classifier_scores

    ref = clf_ckpt["reference"]
    scores = classifier_scores(clf, x, device=device)
    mu, sigma = feature_statistics(classifier_features(clf, x, device=device))
    info = {"path": str(cls_path), "test_accuracy": clf_ckpt.get("test_accuracy"),
            "reference_images": ref["n"], "reference_confidence": ref["confidence"],
            "reference_class_entropy": ref["class_entropy"]}
    metrics = {
        "classifier_fid": frechet_distance(mu, sigma, ref["mu"].numpy(), ref["sigma"].numpy()),
        "classifier_confidence": scores["confidence"],
        "class_entropy": scores["class_entropy"],
        "class_histogram": scores["class_histogram"],
    }
    return info, metrics


def inception_metrics(result: dict[str, Any], inception: torch.nn.Module, inception_weights: str | os.PathLike,
                      x: torch.Tensor, spec: str, fmt: ImageFormat, ref_n: int | None, device: str,
                      progress: bool) -> None:
    """Add standard FID and Inception Score to ``result``; the data set's statistics come from the
    cache (keyed by data set, format, ``ref_n`` and the weights' SHA-256) or are computed once."""
    from .inception import inception_features, inception_score

    t1 = time.perf_counter()
    wpath = Path(inception_weights)
    digest = file_sha256(wpath)

    def reference():
        ds = load_dataset(spec, image_size=fmt.img_size, channels=fmt.img_ch)
        imgs = ds.images_uint8 if ref_n is None else ds.images_uint8[:ref_n]
        feats, _ = inception_features(inception, imgs.float().div(127.5).sub(1.0), device=device,
                                      progress=progress, desc="inception[reference]")
        return feature_statistics(feats)

    key = {"data": _normal_spec(spec), "img_size": fmt.img_size, "img_ch": fmt.img_ch, "ref_n": ref_n,
           "weights_sha256": digest, "features": "inception-v3-compat/2048"}
    r_mu, r_sigma, cache_path, hit = cached_statistics(key, reference, kind="inception")
    pool, logits = inception_features(inception, x, device=device, progress=progress, desc="inception[samples]")
    s_mu, s_sigma = feature_statistics(pool)
    is_mean, is_std = inception_score(logits)
    result["metrics"].update({"inception_fid": frechet_distance(s_mu, s_sigma, r_mu, r_sigma),
                              "inception_score": is_mean, "inception_score_std": is_std})
    result["inception"] = {"weights": str(wpath), "weights_sha256": digest, "reference_images": ref_n or "all",
                           "reference_cache": str(cache_path), "reference_cached": hit}
    result["seconds"]["inception"] = time.perf_counter() - t1


def evaluate(model_path: str | os.PathLike, n: int = 1000, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
             threshold_scale: float = 1.0, use_ema: bool = True, seed: int = 0, batch_size: int = 64,
             classifier: str | os.PathLike | None = None, inception_weights: str | os.PathLike | None = None,
             data: str | None = None, ref_n: int | None = None, device: str = "cpu",
             progress: bool = True, order: int = 2, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate ``n`` samples and compute the metrics; see the module docstring.  ``order`` is
    DPM-Solver's; the analytic samplers use the moments the checkpoint carries (``sdm moments``).
    ``ckpt`` is the file's content when the caller has read it already."""
    if n < 2:
        raise EvalError("--n must be >= 2 (a covariance needs at least two samples)")
    if batch_size < 1:
        raise EvalError("--batch-size must be >= 1")
    ckpt = load_checkpoint(model_path) if ckpt is None else ckpt
    model, diffusion, ckpt = model_from_checkpoint(model_path, use_ema=use_ema, device=device, ckpt=ckpt)
    cfg = model.cfg
    cls_path, clf, clf_ckpt, spec = checked_classifier(model_path, classifier, data or model_data_spec(ckpt), cfg,
                                                       device)
    inception = None
    if inception_weights:  # loaded before sampling, so a bad file fails at once
        from .inception import load_inception

        inception = load_inception(inception_weights, device=device)

    chain = {"sampler": sampler, "steps": steps, "eta": eta, "order": order, "moments": checkpoint_moments(ckpt)}
    x, sample_seconds = _samples(model, diffusion, n, chain, seed, threshold_scale, batch_size, device, progress)
    classifier_info, metrics = offline_metrics(clf, clf_ckpt, cls_path, x, device)
    result: dict[str, Any] = {
        "settings": {
            "model": str(model_path), "sampler": sampler, "steps": diffusion.steps if sampler == "ddpm" else steps,
            **({"order": order} if sampler.startswith("dpm-solver") else {}),
            "eta": eta, "n": n, "seed": seed, "threshold_scale": threshold_scale,
            "weights": "ema" if uses_ema(ckpt, use_ema) else "raw",
            "batch_size": batch_size, "data": spec, "model_kind": cfg.neuron, "T": cfg.T,
            "img_size": cfg.img_size, "img_ch": cfg.img_ch, "stage": ckpt.get("stage", "base"),
            "train_step": ckpt.get("step"), "converted": "conversion" in ckpt, "device": str(device),
        },
        "classifier": classifier_info,
        "metrics": metrics,
        "seconds": {"sampling": sample_seconds},
    }
    if inception is not None:
        inception_metrics(result, inception, inception_weights, x, spec, cfg, ref_n, device, progress)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a two-column (metric, value) text table, with the settings on a header line."""
    s, m, c = result["settings"], result["metrics"], result["classifier"]
    rows = [
        ("classifier FID (offline)", f"{m['classifier_fid']:.3f}"),
        ("classifier confidence", f"{m['classifier_confidence']:.4f}  (real data {c['reference_confidence']:.4f})"),
        ("class entropy", f"{m['class_entropy']:.4f}  (real data {c['reference_class_entropy']:.4f})"),
    ]
    if "inception_fid" in m:
        rows += [("Inception FID", f"{m['inception_fid']:.3f}"),
                 ("Inception Score", f"{m['inception_score']:.3f} +- {m['inception_score_std']:.3f}")]
    rows.append(("sampling time", f"{result['seconds']['sampling']:.1f} s"))
    width = max(len(r[0]) for r in rows)
    head = (f"{s['model']}: {s['n']} samples, {s['sampler']} {s['steps']} steps, seed {s['seed']}, "
            f"threshold x{s['threshold_scale']:g}, {s['weights']} weights; data {s['data']}, classifier "
            f"{c['path']} (held-out accuracy {c['test_accuracy']:.2%})")
    lines = [head, f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 5}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"


__all__ = ["evaluate", "format_table", "EvalError", "default_classifier_path", "model_data_spec"]
