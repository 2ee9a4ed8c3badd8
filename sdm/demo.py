"""``sdm demo``: the whole pipeline on the embedded default data set (bundled MNIST subset).

Stages run in order and each prints what it produced; later stages (NIR export,
Lava simulation, energy report) join as they are built.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_MODEL = {"ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "T": 4, "img_size": 32, "img_ch": 1}
DEMO_TRAIN = {"data": "mnist-bundled", "steps": 300, "batch_size": 32, "lr": 1e-3, "warmup": 20,
              "ckpt_every": 100, "log_every": 10}


def add_demo(sub):
    p = sub.add_parser("demo", help="run the pipeline end to end on the bundled MNIST subset",
                       description="Train a small spiking UNet briefly on the bundled MNIST subset and sample a grid.")
    p.add_argument("--out", default="demo_out", help="output directory")
    p.add_argument("--steps", type=int, default=DEMO_TRAIN["steps"], help="training steps")
    p.add_argument("-n", type=int, default=36, help="samples in the grid")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=run_demo)


def run_demo(a) -> None:
    import torch

    from sdm.train.diffusion import ScheduleConfig
    from sdm.train.sampling import generate, model_from_checkpoint, save_grid
    from sdm.train.trainer import TrainConfig, train
    from sdm.train.unet import UNetConfig

    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    t0 = time.perf_counter()
    print(f"[1/2] training a small spiking UNet on mnist-bundled for {a.steps} steps (CPU)")
    summary = train(out, UNetConfig.from_dict(DEMO_MODEL), TrainConfig.from_dict({**DEMO_TRAIN, "steps": a.steps}),
                    ScheduleConfig(), device="cpu")
    hist = summary["history"]
    print(f"      loss {hist[0][1]:.4f} -> {hist[-1][1]:.4f}, {summary['images_per_s']:.1f} img/s, "
          f"checkpoint {summary['checkpoint']}")
    print(f"[2/2] sampling {a.n} images with DDIM ({a.sample_steps} steps)")
    model, diffusion, _ = model_from_checkpoint(summary["checkpoint"])
    x = generate(model, diffusion, a.n, sampler="ddim", steps=a.sample_steps, seed=0)
    grid = save_grid(x, out / "samples.png", scale=2)
    print(f"      wrote {grid}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/")
