"""Quantised-activation ANN and its conversion to a spiking UNet (Fast-SNN, SDM section 6).

Quantised ReLU with ``b`` bits and a learnable clip ``alpha`` per layer (init 6.0,
as in the reference), ``n = 2^b - 1`` levels above zero::

    k(x) = clamp(floor(x * n / alpha + 1/2), 0, n)          integer level
    q(x) = alpha / n * k(x)

``floor(y + 1/2)`` is rounding with ties upwards, which is exactly what an IF
neuron with ``H(0) = 1`` does at a tie (``torch.round`` would round ties to even).

Gradients (PACT with a straight-through estimator for the rounding):
``dq/dx = 1`` for ``0 < x < alpha`` and 0 elsewhere; ``dq/dalpha = 1`` for
``x >= alpha`` and 0 elsewhere, i.e. the gradient of ``clamp(x, 0, alpha)``.

Conversion (:func:`convert_qann`) replaces every quantised ReLU by an IF neuron
with ``T = n`` steps, threshold ``theta = alpha`` of that layer, membrane starting
at ``theta / 2``, reset by subtraction and, by default, signed spikes
(``train/neuron.py``).  With a constant input current ``x`` over the ``T`` steps
that neuron fires exactly ``k(x)`` times (up to floating-point rounding of the
running membrane sum at exact ties), so ``theta * count / T = q(x)``.  A spike
stands for the value ``theta``; the factor is folded into the weights of the one
convolution that reads the neuron, so spikes stay unit-sized (0/1, or -1/0/1).  Inside the
network the currents of deeper layers are not constant over the steps, so there
the spike count equals ``k(mean current)`` for every neuron whose final membrane
lies in ``[0, theta)`` (or is ``< 0`` with no spike, or ``>= theta`` with T spikes),
but not for a neuron that fired and later received net inhibition, or received
its input too late to emit it; always exact is charge conservation
``theta * count = theta / 2 + sum_t x[t] - v[T-1]``.  A signed neuron gives back the
spikes of net inhibition, so its net count equals ``k(mean current)`` for every neuron
whose final membrane is below ``theta`` (up to the -1e-3 inhibition margin); only late
input remains an error.  The converted model averages
the residual stream over the ``T`` steps before the analog tail (``readout="mean"``).

Optional block-wise fine-tuning (:func:`finetune_blocks`, the reference's SNN_ft):
each block of the SNN is trained to match the mean over steps of its output to the
quantised ANN's block output (MSE), on the same inputs, with the ATan surrogate.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from sdm.errors import ConfigError, SDMError

from .checkpoint import (
    checkpoint_schedule,
    uses_ema,
)

QANN_ALPHA_INIT = 6.0


def quant_level(x: torch.Tensor, alpha: torch.Tensor | float, bits: int) -> torch.Tensor:
    """The integer level ``k(x) = clamp(floor(x * n / alpha + 1/2), 0, n)`` (no gradient)."""
    n = 2 ** bits - 1
    return torch.clamp(torch.floor(x * n / alpha + 0.5), 0, n)


class _QuantReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, bits):
        n = 2 ** bits - 1
        ctx.save_for_backward(x, alpha)
        return quant_level(x, alpha, bits) * (alpha / n)

    @staticmethod
    def backward(ctx, g):
        x, alpha = ctx.saved_tensors
        inside = ((x > 0) & (x < alpha)).to(g.dtype)
        g_alpha = (g * (x >= alpha).to(g.dtype)).sum().reshape(alpha.shape)
        return g * inside, g_alpha, None


class QuantReLU(nn.Module):
    """``q(x) = alpha/n * clamp(floor(x*n/alpha + 1/2), 0, n)``, ``n = 2^bits - 1``, learnable ``alpha``."""

    def __init__(self, bits: int, alpha: float = QANN_ALPHA_INIT):
        super().__init__()
        if bits < 1:
            raise ValueError(f"quantised ReLU needs bits >= 1, got {bits}")
        self.bits = int(bits)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return _QuantReLUFn.apply(x, self.alpha.to(x.dtype), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


# which convolution reads each neuron slot; every neuron in the UNet feeds exactly one conv
NEURON_TO_CONV = {"neuron": "conv", "neuron1": "conv1", "neuron2": "conv2"}


def neuron_slots(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, activation, conv that reads it)`` for every neuron slot of the UNet, in module order."""
    out = []
    for name, parent in model.named_modules():
        for attr, conv_attr in NEURON_TO_CONV.items():
            child = parent._modules.get(attr)
            if child is not None:
                out.append((f"{name}.{attr}" if name else attr, child, getattr(parent, conv_attr)))
    return out


class ConversionError(SDMError):
    """A checkpoint that cannot be converted; one line."""


def convert_qann(ckpt: dict, use_ema: bool = True, source: str = "", signed: bool = True) -> dict:
    """Turn a quantised-ANN checkpoint into an ordinary spiking checkpoint (dict, ready to save).

    T = 2^b - 1, per-layer theta = alpha, v_init = 1/2, reset by subtraction, theta folded into
    the weights of the conv after each neuron, ``readout="mean"``; ``signed`` neurons (the
    reference code's default) take spikes back with inhibitory -1 spikes.
    """
    from .diffusion import ScheduleConfig
    from .unet import SpikingUNet

    qann = _checked_model(ckpt, use_ema, source or "checkpoint")
    cfg = qann.cfg
    if cfg.neuron != "qrelu":
        raise ConversionError(f"{source or 'checkpoint'}: convert needs a quantised ANN (sdm train --model qann), "
                              f"this checkpoint's model is neuron={cfg.neuron!r}")
    slots = neuron_slots(qann)
    acts = [m for m in qann.modules() if isinstance(m, QuantReLU)]
    convs = [id(c) for _, _, c in slots]
    if [a for _, a, _ in slots] != acts or len(set(convs)) != len(convs):
        raise ConversionError(f"{source or 'checkpoint'}: every quantised ReLU must feed exactly one conv of its "
                              "own (theta is folded into that conv's weights)")
    thetas = [float(act.alpha.detach()) for _, act, _ in slots]
    bad = [name for (name, _, _), th in zip(slots, thetas) if not th > 0]
    if bad:
        raise ConversionError(f"{source or 'checkpoint'}: clip alpha must be positive to become a threshold; "
                              f"not so in {', '.join(bad[:3])}")
    snn_cfg = dataclasses.replace(cfg, neuron="if", T=2 ** cfg.bits - 1, reset="subtract", v_init=0.5,
                                  signed=bool(signed), thetas=tuple(thetas), readout="mean", tsm=False)
    snn = SpikingUNet(snn_cfg)
    state = {k: v for k, v in qann.state_dict().items() if not k.endswith(".alpha") or "neuron" not in k}
    snn.load_state_dict(state)
    with torch.no_grad():
        for (_, _, conv), th in zip(neuron_slots(snn), thetas):
            conv.weight.mul_(th)  # conv(theta * s) = (theta * W) * s + b
    return {
        "model_config": snn.cfg.to_dict(),
        "diffusion": ckpt.get("diffusion") or dataclasses.asdict(ScheduleConfig()),
        "stage": "converted",
        "model": snn.state_dict(),
        "ema": None,
        "data": ckpt.get("data"),
        "conversion": {"source": str(source), "bits": cfg.bits, "T": snn_cfg.T, "thetas": thetas,
                       "signed": bool(signed),
                       "source_step": ckpt.get("step"), "used_ema": uses_ema(ckpt, use_ema)},
    }


def _block_io(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """``(block, block input)`` of every UNet block (stem excluded), as the forward pass sees them."""
    records = []
    hooks = [b.register_forward_hook(lambda m, inp, out: records.append((m, inp[0].detach())))
             for b in [*model.down, *model.middle, *model.up]]
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return records


def block_mismatch(snn: nn.Module, qann: nn.Module, snn_block: nn.Module, qann_block: nn.Module,
                   inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``MSE(mean_t snn_block(inp), qann_block(mean_t inp))``: how far a converted block's rate output is
    from the quantised ANN block on the same input (``inp`` is ``[T, B, ...]``, the SNN's own input to the
    block); differentiable in the SNN block's parameters only."""
    with torch.no_grad():
        target = qann_block(inp.mean(0, keepdim=True), qann.time_embedding(t))[0]
    out = snn_block(inp, snn.time_embedding(t).detach()).mean(0)
    return torch.nn.functional.mse_loss(out, target)


def finetune_blocks(snn: nn.Module, qann: nn.Module, data, diffusion, steps: int, lr: float = 1e-4,
                    generator: torch.Generator | None = None, progress: bool = False) -> list[tuple[float, float]]:
    """Block-wise fine-tuning (reference SNN_ft): for each block, ``steps`` Adam steps on
    ``MSE(mean_t SNN_block(s_in), QANN_block(mean_t s_in))`` where ``s_in`` is the SNN's own input to
    that block on noisy training images.  BatchNorm stays in eval mode.

    Returns, per block, the mean MSE over its first and over its last ``min(10, steps)`` steps: single
    batches are too noisy to show whether a block improved."""
    from tqdm.auto import tqdm

    if steps < 1:
        raise ConfigError(f"fine-tuning needs at least one step per block, got {steps}")
    snn.eval()
    qann.eval()
    snn_blocks = [*snn.down, *snn.middle, *snn.up]
    qann_blocks = [*qann.down, *qann.middle, *qann.up]
    window = min(10, steps)
    result = []
    bar = tqdm(total=steps * len(snn_blocks), desc="fine-tune", disable=not progress, dynamic_ncols=True)
    for i, (sb, qb) in enumerate(zip(snn_blocks, qann_blocks)):
        params = [p for p in sb.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        history = []
        for _ in range(steps):
            xt, tt, _ = diffusion.diffuse(next(data), generator)
            inp = next(v for m, v in _block_io(snn, xt, tt) if m is sb)
            loss = block_mismatch(snn, qann, sb, qb, inp, tt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            bar.update()
            bar.set_postfix(block=f"{i + 1}/{len(snn_blocks)}", mse=f"{history[-1]:.3e}")
        before, after = sum(history[:window]) / window, sum(history[-window:]) / window
        result.append((before, after))
        if progress:
            bar.write(f"  block {i + 1}/{len(snn_blocks)}: mse {before:.3e} -> {after:.3e}")
    bar.close()
    return result


def _checked_model(ckpt: dict, use_ema: bool, what: str):
    """The checkpoint's model with the chosen weights, checked as every command checks a checkpoint."""
    from .sampling import model_from_checkpoint

    return model_from_checkpoint(what, use_ema=use_ema, ckpt=ckpt)[0]


def finetune_from_checkpoints(qann_ckpt: dict, snn_ckpt: dict, steps: int, lr: float = 1e-4,
                              data: str | None = None, batch_size: int = 16, seed: int = 0,
                              use_ema: bool = True, progress: bool = True) -> list[tuple[float, float]]:
    """Fine-tune the converted checkpoint ``snn_ckpt`` in place (its ``model`` weights) block by block."""
    from .data import infinite_loader, load_dataset
    from .diffusion import GaussianDiffusion

    qann = _checked_model(qann_ckpt, use_ema, "quantised ANN checkpoint")
    qcfg = qann.cfg
    snn = _checked_model(snn_ckpt, False, "converted checkpoint")
    spec = data or (qann_ckpt.get("data") or {}).get("spec") or qann_ckpt.get("train_config", {}).get("data")
    if not spec:
        raise ConversionError("fine-tuning needs training data: give --data")
    dataset = load_dataset(spec, image_size=qcfg.img_size)
    diffusion = GaussianDiffusion(checkpoint_schedule(snn_ckpt, "converted checkpoint"))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    block_mse = finetune_blocks(snn, qann, infinite_loader(dataset, batch_size, seed=seed), diffusion, steps, lr=lr,
                                generator=gen, progress=progress)
    snn_ckpt["model"] = snn.state_dict()
    snn_ckpt["conversion"]["finetune"] = {"steps_per_block": steps, "lr": lr, "data": spec,
                                          "block_mse_first_last": [list(m) for m in block_mse],
                                          "seconds": time.perf_counter() - t0}
    return block_mse


__all__ = ["finetune_from_checkpoints", "QuantReLU", "quant_level", "convert_qann", "finetune_blocks", "block_mismatch",
           "neuron_slots", "ConversionError",
           "QANN_ALPHA_INIT", "NEURON_TO_CONV"]
