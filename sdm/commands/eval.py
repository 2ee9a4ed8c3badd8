"""``sdm eval``: sample a model and score the samples (classifier FID and confidence; FID/IS)."""

from __future__ import annotations

import sys
from pathlib import Path

from sdm.errors import UserError

from . import options


def add_parser(sub):
    p = sub.add_parser("eval", help="sample a model and score the samples (classifier FID, confidence, FID/IS)",
                       description="Generate N samples and report the offline metric (FID in the feature space of "
                                   "the project's classifier, its confidence) and, with --inception-weights, standard "
                                   "FID and Inception Score (docs/evaluation.md).",
                       parents=[options.sampler(), options.seed(), options.threads(), options.device(),
                                options.no_ema(), options.batch_size(), options.force()])
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("-n", "--n", type=int, default=1000, help="number of samples")
    p.add_argument("--threshold-scale", type=float, default=1.0, help="threshold guidance: theta' = S * theta")
    p.add_argument("--classifier", metavar="PATH",
                   help="classifier checkpoint (default: classifier.pt beside MODEL.pt)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="local torch-fidelity InceptionV3 weights: adds standard FID and IS")
    p.add_argument("--ref-n", type=int, help="data set images for the Inception reference statistics (default: all)")
    p.add_argument("--data", help="reference data set (default: the model's training data)")
    p.add_argument("--json", metavar="OUT.json", help="write all numbers and settings here")
    p.add_argument("--temperature", type=options.floats, metavar="T[,T...]",
                   help="Spiking-Diffusion (absorbing) models: token sampling temperature(s), one row each and the "
                        "best named (default 1)")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    from sdm.train.evaluate import evaluate, format_table

    options.apply_threads(a)
    if a.ref_n is not None and a.ref_n < 2:
        raise UserError("--ref-n must be >= 2")
    if a.n < 2:
        raise UserError("--n must be >= 2 (a covariance needs at least two samples)")
    device = options.pick_device(a)
    from sdm.train.checkpoint import load_checkpoint
    from sdm.train.sd_model import ABSORBING_KIND, checkpoint_kind

    _check_json(a)
    ckpt = load_checkpoint(a.model)
    if checkpoint_kind(ckpt) == ABSORBING_KIND:
        return _eval_absorbing(a, ckpt, device)
    if a.temperature is not None:
        raise UserError("--temperature applies to Spiking-Diffusion (absorbing) models; this is a spiking UNet")
    options.check_sampler(a)
    options.check_threshold_scale(a.threshold_scale)
    r = evaluate(a.model, n=a.n, sampler=a.sampler, steps=a.steps, eta=a.eta, threshold_scale=a.threshold_scale,
                 use_ema=not a.no_ema, seed=a.seed, batch_size=a.batch_size, classifier=a.classifier,
                 inception_weights=a.inception_weights, data=a.data, ref_n=a.ref_n, device=device, order=a.order,
                 ckpt=ckpt)
    print(format_table(r), end="")  # the table is the command's data: stdout holds it alone
    _write_json(a, r)


def _check_json(a) -> None:
    if a.json is not None:
        from sdm.paths import check_output

        classifier = a.classifier or str(Path(a.model).parent / "classifier.pt")
        check_output(a.json, "--json", "json", force=a.force,
                     inputs=[("MODEL.pt", a.model), ("--classifier", classifier),
                             ("--inception-weights", a.inception_weights)])


def _write_json(a, result: dict) -> None:
    import json

    sys.stdout.flush()
    if a.json:
        from sdm.files import atomic_write

        atomic_write(a.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        print(f"wrote {a.json}", file=sys.stderr)


def _eval_absorbing(a, ckpt: dict, device: str) -> None:
    """A Spiking-Diffusion checkpoint: the UNet's sampler options are refused, not ignored."""
    from sdm.train.sd_evaluate import evaluate_absorbing, format_absorbing_table

    unet_only = [flag for flag, given in (("--sampler", a.sampler != "ddim"), ("--eta", a.eta != 0.0),
                                          ("--steps", a.steps != 50), ("--threshold-scale", a.threshold_scale != 1.0))
                 if given]
    if unet_only:
        raise UserError(f"{unet_only[0]} applies to the spiking UNet, not to a Spiking-Diffusion model")
    r = evaluate_absorbing(a.model, n=a.n, temperatures=a.temperature, seed=a.seed, batch_size=a.batch_size,
                           use_ema=not a.no_ema, classifier=a.classifier, inception_weights=a.inception_weights,
                           data=a.data, ref_n=a.ref_n, device=device, ckpt=ckpt)
    print(format_absorbing_table(r), end="")
    _write_json(a, r)
