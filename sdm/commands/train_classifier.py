"""``sdm train-classifier``: the small classifier behind the offline metric of ``sdm eval``."""

from __future__ import annotations

from sdm.errors import UserError

from . import options


def add_parser(sub):
    p = sub.add_parser("train-classifier", help="train the small classifier behind the offline metric of `sdm eval`",
                       description="Train a small CNN classifier on a labelled data set (held-out split for its "
                                   "accuracy) and store it with the data set's reference feature statistics "
                                   "(docs/evaluation.md).",
                       parents=[options.seed(), options.threads(), options.device(), options.batch_size(),
                                options.force()])
    p.add_argument("--data", default="mnist-bundled",
                   help="labelled data set: mnist-bundled | mnist:DIR | fashion-mnist:DIR | kmnist:DIR | "
                        "emnist-letters:DIR | cifar10:DIR")
    p.add_argument("--out", required=True, metavar="PATH", help="e.g. runs/mnist/classifier.pt (beside model.pt)")
    p.add_argument("--img-size", type=int, default=32, help="must equal the diffusion model's image size")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of the data held out for the accuracy")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    from sdm.train.classifier import reference_statistics, save_classifier, train_classifier
    from sdm.train.data import load_dataset

    options.apply_threads(a)
    if not 0 < a.holdout < 1:
        raise UserError("--holdout must be between 0 and 1")
    options.check_float(a.lr, "--lr", low=0.0, low_open=True)
    options.check_int(a.steps, "--steps", 1)
    options.check_img_size(a.img_size)
    device = options.pick_device(a)
    from sdm.paths import check_output

    check_output(a.out, "--out", "classifier", force=a.force)
    ds = load_dataset(a.data, image_size=a.img_size)
    model, info = train_classifier(ds, a.data, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                   holdout=a.holdout, device=device)
    ref = reference_statistics(model, ds, device=device)
    save_classifier(a.out, model, a.data, info, ref)
    print(f"wrote {a.out}: {a.data} {ds.channels}x{ds.image_size}x{ds.image_size}, {model.cfg.num_classes} classes, "
          f"held-out accuracy {info['test_accuracy']:.2%} on {info['n_test']} images ({info['steps']} steps, "
          f"{info['seconds']:.1f} s); reference statistics of {ref['n']} images")
