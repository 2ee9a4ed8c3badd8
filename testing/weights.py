"""Trained-looking parameters for untrained test models."""

from __future__ import annotations

import torch


def randomise(model, seed=0, tsm=False):
    """Trained-looking BatchNorm statistics (and TSM gains) so that folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    if tsm:
        model.enable_tsm()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.6 - 0.1)
            if getattr(m, "tsm_gain", None) is not None:
                m.tsm_gain.copy_(torch.rand(m.tsm_gain.shape, generator=g) * 0.4 + 0.8)
    return model.eval()
