"""Spiking UNet, diffusion schedule and samplers, data and training loop.

Nothing in this package imports Lava: training also runs on machines
(GPU boxes with other Python versions) where Lava cannot be installed.
"""
