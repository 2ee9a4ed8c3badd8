"""Lava simulation of the spiking UNet: NIR graph -> Lava processes -> denoising steps.

Imports Lava (Python 3.10 only); nothing in ``sdm.train`` depends on this package.
"""
