"""``sdm eval`` on a Spiking-Diffusion (absorbing) checkpoint: samples at one or more temperatures,
each scored with the offline metric (classifier FID, confidence, class entropy) and, with Inception
weights, standard FID and IS — the same functions as the UNet's evaluation (train/evaluate.py).

The reference sweeps twelve temperatures and reports its best FID; here every temperature's row is
kept (``by_temperature``) and the best one named (``best``), so a sweep is one command.  All
temperatures use the same seed, so their differences come from the temperature alone.  The classifier
must be made for the model's images (28 px for the VQ-SVAE's default): ``sdm train-classifier
--img-size 28``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .checkpoint import load_checkpoint, uses_ema
from .evaluate import EvalError, checked_classifier, inception_metrics, model_data_spec, offline_metrics
from .sd_model import ABSORBING_KIND, load_absorbing, open_checkpoint, sample_absorbing


def _temperatures(temperatures: list[float]) -> list[float]:
    if not temperatures:
        raise EvalError("--temperature: give at least one temperature")
    for t in temperatures:
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t < float("inf"):
            raise EvalError(f"--temperature must be a positive number, got {t!r}")
    if len(set(temperatures)) < len(temperatures):
        raise EvalError(f"--temperature {','.join(f'{t:g}' for t in temperatures)}: a value is given twice")
    return [float(t) for t in temperatures]


def evaluate_absorbing(model_path: str | os.PathLike, n: int = 1000, temperatures: list[float] | None = None,
                       seed: int = 0, batch_size: int = 64, use_ema: bool = True,
                       classifier: str | os.PathLike | None = None, inception_weights: str | os.PathLike | None = None,
                       data: str | None = None, ref_n: int | None = None, device: str = "cpu",
                       progress: bool = True, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample ``n`` images per temperature (default ``[1.0]``) and score them; see the module docstring.
    ``ckpt`` is the file's content when the caller has read it already."""
    temps = _temperatures([1.0] if temperatures is None else list(temperatures))
    if n < 2:
        raise EvalError("--n must be >= 2 (a covariance needs at least two samples)")
    ckpt, _ = open_checkpoint(load_checkpoint(model_path) if ckpt is None else ckpt, ABSORBING_KIND)
    model = load_absorbing(ckpt, device, use_ema)
    fmt = model.vqsvae.cfg
    spec = data or model_data_spec(ckpt)
    cls_path, clf, clf_ckpt, spec = checked_classifier(model_path, classifier, spec, fmt, device)
    inception = None
    if inception_weights:  # loaded before sampling, so a bad file fails at once
        from .inception import load_inception

        inception = load_inception(inception_weights, device=device)
    rows, info, inception_info = [], None, None
    for temperature in temps:
        t0 = time.perf_counter()
        x = sample_absorbing(model, n, temperature=temperature, seed=seed, batch_size=batch_size)
        row: dict[str, Any] = {"settings": {"temperature": temperature}, "seconds": {}}
        row["seconds"]["sampling"] = time.perf_counter() - t0
        info, row["metrics"] = offline_metrics(clf, clf_ckpt, cls_path, x, device)
        if inception is not None:
            inception_metrics(row, inception, inception_weights, x, spec, fmt, ref_n, device, progress)
            inception_info = row["inception"]
        rows.append({"temperature": temperature, **row["metrics"], "seconds": row["seconds"]})
    best = min(rows, key=lambda r: r["classifier_fid"])
    return {
        "settings": {"model": str(model_path), "model_kind": ABSORBING_KIND, "n": n, "seed": seed,
                     "temperatures": temps, "weights": "ema" if uses_ema(ckpt, use_ema) else "raw",
                     "batch_size": batch_size, "data": spec, "img_size": fmt.img_size, "img_ch": fmt.img_ch,
                     "T": model.denoiser.cfg.T, "diffusion_steps": model.diffusion.cfg.steps,
                     "train_step": ckpt.get("step"), "device": str(device)},
        "classifier": info,
        "by_temperature": rows,
        "best": {"temperature": best["temperature"], "classifier_fid": best["classifier_fid"]},
        **({"inception": inception_info} if inception_info else {}),
    }


def format_absorbing_table(result: dict[str, Any]) -> str:
    """One row per temperature (classifier FID, confidence, class entropy; Inception FID and IS when
    computed), the settings on a header line, the best temperature last."""
    s, c = result["settings"], result["classifier"]
    inception = "inception_fid" in result["by_temperature"][0]
    cols = ["temperature", "classifier FID", "confidence", "class entropy"] + (["Inception FID", "IS"] if inception
                                                                                else []) + ["sampling s"]
    lines = [f"{s['model']}: {s['n']} samples per temperature, seed {s['seed']}, {s['weights']} weights, "
             f"{s['diffusion_steps']} unmasking steps; data {s['data']}, classifier {c['path']} (held-out accuracy "
             f"{c['test_accuracy']:.2%}; real data: confidence {c['reference_confidence']:.4f}, class entropy "
             f"{c['reference_class_entropy']:.4f})", "  ".join(cols), "  ".join("-" * len(h) for h in cols)]
    for r in result["by_temperature"]:
        values = [f"{r['temperature']:g}", f"{r['classifier_fid']:.3f}", f"{r['classifier_confidence']:.4f}",
                  f"{r['class_entropy']:.4f}"]
        if inception:
            values += [f"{r['inception_fid']:.3f}", f"{r['inception_score']:.3f}"]
        values.append(f"{r['seconds']['sampling']:.1f}")
        lines.append("  ".join(v.ljust(len(h)) for v, h in zip(values, cols)).rstrip())
    best = result["best"]
    lines.append(f"best: temperature {best['temperature']:g}, classifier FID {best['classifier_fid']:.3f}")
    return "\n".join(lines) + "\n"


__all__ = ["evaluate_absorbing", "format_absorbing_table"]
