"""Lava processes and process models of this project.

Kept in a folder of their own because Lava's compiler imports every module in the folder
of a process class when it searches for process models; these modules import only Lava,
numpy and the project's integer arithmetic (:mod:`sdm.neuromorphic.fixed_point`), so that
search finds them and nothing else.

Importing this package first loads Lava's multiprocessing runtime the safe way
(:func:`~sdm.neuromorphic.lava_runtime.ensure_lava_runtime`), before any of its modules
imports a Lava process.
"""

from ..lava_runtime import ensure_lava_runtime

ensure_lava_runtime()
