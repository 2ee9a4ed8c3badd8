"""Shared fixtures: a tiny spiking UNet, a 2-thread torch setting and a briefly trained checkpoint.

The tiny model still has every block type (stem, ResBlocks with and without a 1x1
shortcut, a DownSample, the middle, UpSample, tail), so training, checkpointing and
sampling go through all of the network's code at a fraction of a second per step.
"""

from __future__ import annotations

import os

import pytest
import torch

TEST_THREADS = int(os.environ.get("SDM_TEST_THREADS", "0")) or min(2, os.cpu_count() or 1)


def tiny_cfg(**kw):
    from sdm.train.unet import UNetConfig

    base = dict(img_ch=1, img_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=2)
    base.update(kw)
    return UNetConfig(**base)


@pytest.fixture(scope="session")
def tiny_model_flags():
    """The tiny model as ``sdm train`` options."""
    return ["--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--T", "2", "--img-size", "16"]


@pytest.fixture(scope="session")
def torch_threads():
    """Torch on 2 threads, as ``make test`` runs (``SDM_TEST_THREADS`` overrides); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield TEST_THREADS
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_cfg():
    """16x16 grey images, ch 8, two levels, one res block, T = 2: every block type, ~40 k parameters."""
    return tiny_cfg()


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory, tiny_model_cfg, torch_threads):
    """``model.pt`` written by ``train()``: 8 steps on mnist-bundled with EMA, so weights, EMA,
    optimizer state and loss history are all present and non-trivial.  Treat it as read-only."""
    from sdm.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    train(out, tiny_model_cfg,
          TrainConfig(data="mnist-bundled", steps=8, batch_size=8, lr=2e-3, ema_decay=0.5, seed=3, log_every=2),
          device="cpu", progress=False)
    return out / "model.pt"
