"""Spiking Diffusion Models, from training to neuromorphic deployment.

Stages live in top-level folders of the repository and install as
subpackages: ``sdm.train`` (model, diffusion, training), ``sdm.export``
(NIR), ``sdm.neuromorphic`` (Lava) and ``sdm.energy`` (energy reports).
"""

__version__ = "0.1.0"
