"""NIR export and import of the spiking UNet (``export-nir``, ``sdm import-nir``).

The trained model is lowered to a small graph IR (:mod:`.ir`), which is written to and
read from NIR files (:mod:`.nir_format`) and executed in PyTorch (:mod:`.execute`).
"""
