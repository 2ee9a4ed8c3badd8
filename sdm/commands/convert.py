"""``sdm convert``: ANN-to-SNN conversion of a quantised ANN (``sdm train --model qann``)."""

from __future__ import annotations

from sdm.errors import UserError

from . import options


def add_parser(sub):
    p = sub.add_parser("convert", help="convert a quantised ANN (train --model qann) into a spiking checkpoint",
                       description="ANN-to-SNN conversion (Fast-SNN, SDM section 6): IF neurons with T = 2^bits - 1, "
                                   "threshold = the layer's clip alpha, membrane starting at theta/2, reset by "
                                   "subtraction, signed spikes unless --unsigned (docs/conversion.md).",
                       parents=[options.seed(), options.threads(),
                                options.no_ema("convert raw weights even if EMA weights exist"),
                                options.batch_size(16, "fine-tuning batch size"), options.force()])
    p.add_argument("model", metavar="QANN.pt")
    p.add_argument("--out", required=True, metavar="SNN.pt")
    p.add_argument("--unsigned", action="store_true",
                   help="binary 0/1 spikes only (the paper's setting) instead of signed spikes, where a neuron "
                        "that has fired takes a spike back with a -1 spike (the reference code's default)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="block-wise fine-tuning steps per block (MSE to the quantised ANN's block outputs)")
    p.add_argument("--finetune-lr", type=float, default=1e-4,
                   help="Adam learning rate of the fine-tuning (1e-6 barely moves a 2-bit UNet: docs/conversion.md)")
    p.add_argument("--data", help="training data for fine-tuning (default: the QANN's training data)")
    p.set_defaults(func=run)
    return p


def run(a) -> None:
    from sdm.train.checkpoint import load_checkpoint, save_checkpoint
    from sdm.train.conversion import convert_qann

    options.apply_threads(a)
    if a.finetune_steps < 0:
        raise UserError("--finetune-steps must be >= 0")
    if a.finetune_steps:
        options.check_float(a.finetune_lr, "--finetune-lr", low=0.0, low_open=True)
    from sdm.paths import check_output

    check_output(a.out, "--out", "converted", inputs=[("QANN.pt", a.model)], force=a.force)
    ckpt = load_checkpoint(a.model)
    out = convert_qann(ckpt, use_ema=not a.no_ema, source=a.model, signed=not a.unsigned)
    msg = ""
    if a.finetune_steps:
        from sdm.train.conversion import finetune_from_checkpoints

        block_mse = finetune_from_checkpoints(ckpt, out, a.finetune_steps, lr=a.finetune_lr, data=a.data,
                                              batch_size=a.batch_size, seed=a.seed, use_ema=not a.no_ema)
        before, after = (sum(col) / len(col) for col in zip(*block_mse))
        msg = (f", fine-tuned {len(block_mse)} blocks x {a.finetune_steps} steps "
               f"(mean block mse {before:.3e} -> {after:.3e})")
    save_checkpoint(a.out, out)
    c = out["conversion"]
    print(f"wrote {a.out}: spiking UNet, T={c['T']} ({c['bits']}-bit), {len(c['thetas'])} neuron layers, "
          f"{'signed' if c['signed'] else 'unsigned'} spikes, "
          f"thresholds {min(c['thetas']):.3g}..{max(c['thetas']):.3g}{msg}")
