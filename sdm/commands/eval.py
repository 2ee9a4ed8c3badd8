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
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    import json

    from sdm.train.evaluate import evaluate, format_table

    options.apply_threads(a)
    if a.ref_n is not None and a.ref_n < 2:
        raise UserError("--ref-n must be >= 2")
    if a.n < 2:
        raise UserError("--n must be >= 2 (a covariance needs at least two samples)")
    options.check_sampler(a)
    options.check_threshold_scale(a.threshold_scale)
    device = options.pick_device(a)
    if a.json is not None:
        from sdm.paths import check_output

        classifier = a.classifier or str(Path(a.model).parent / "classifier.pt")
        check_output(a.json, "--json", "json", force=a.force,
                     inputs=[("MODEL.pt", a.model), ("--classifier", classifier),
                             ("--inception-weights", a.inception_weights)])
    r = evaluate(a.model, n=a.n, sampler=a.sampler, steps=a.steps, eta=a.eta, threshold_scale=a.threshold_scale,
                 use_ema=not a.no_ema, seed=a.seed, batch_size=a.batch_size, classifier=a.classifier,
                 inception_weights=a.inception_weights, data=a.data, ref_n=a.ref_n, device=device, order=a.order)
    print(format_table(r), end="")  # the table is the command's data: stdout holds it alone
    sys.stdout.flush()
    if a.json:
        from sdm.files import atomic_write

        atomic_write(a.json, lambda tmp: Path(tmp).write_text(json.dumps(r, indent=2) + "\n"))
        print(f"wrote {a.json}", file=sys.stderr)
