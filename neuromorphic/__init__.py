"""Lava simulation of the spiking UNet: NIR graph -> Lava processes -> denoising steps.

Lava (Python 3.10 only) is loaded on demand, by :func:`.lava_runtime.ensure_lava_runtime`, when a
module of this package first needs it; importing the package or its pure-numpy parts
(:mod:`.fixed_point`) loads no Lava module.  Nothing in ``sdm.train`` depends on this package.
"""
