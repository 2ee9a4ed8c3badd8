"""Which CPU process model runs each process the builders make: one explicit table per mode.

The simulator gives Lava's compiler a model for every process *instance*
(``exception_proc_model_map`` keyed by process), so the compiler never searches for models: its
search re-executes every module beside a process class once per process (a large part of a
134-process compile) and would pick Lava's slow stock ``Conv`` model.  The same table gives the
fused stages their layers' models (:mod:`.fused_model`), so both builds run one set of models.
"""

from __future__ import annotations

from typing import Iterable

from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.process.process import AbstractProcess
from lava.proc.conv.process import Conv

from .asynchronous import as_async
from .conv_model import FastConvModelFixed, FastConvModelFloat
from .fused_model import FusedStage, PyFusedStageModel
from .processes import (
    AnalogJunction,
    ChannelDense,
    DelayLine,
    MemmapSource,
    PyAnalogJunctionFixed,
    PyAnalogJunctionFloat,
    PyChannelDenseFixed,
    PyChannelDenseFloat,
    PyDelayLineFixed,
    PyDelayLineFloat,
    PyMemmapSourceFixed,
    PyMemmapSourceFloat,
    PyRecordingLIFResetFixed,
    PyRecordingLIFResetFloat,
    PyTemporalGainFixed,
    PyTemporalGainFloat,
    PyUpsampleNearestFixed,
    PyUpsampleNearestFloat,
    PyUpsampleZerosFixed,
    PyUpsampleZerosFloat,
    RecordingLIFReset,
    TemporalGain,
    UpsampleNearest,
    UpsampleZeros,
)

MODES = ("floating_pt", "fixed_pt")
PROTOCOLS = ("loihi", "async")

MODELS: dict[str, dict[type[AbstractProcess], type[PyLoihiProcessModel]]] = {
    "floating_pt": {
        Conv: FastConvModelFloat, RecordingLIFReset: PyRecordingLIFResetFloat, AnalogJunction: PyAnalogJunctionFloat,
        TemporalGain: PyTemporalGainFloat, UpsampleNearest: PyUpsampleNearestFloat, DelayLine: PyDelayLineFloat,
        ChannelDense: PyChannelDenseFloat, MemmapSource: PyMemmapSourceFloat, FusedStage: PyFusedStageModel,
        UpsampleZeros: PyUpsampleZerosFloat,
    },
    "fixed_pt": {
        Conv: FastConvModelFixed, RecordingLIFReset: PyRecordingLIFResetFixed, AnalogJunction: PyAnalogJunctionFixed,
        TemporalGain: PyTemporalGainFixed, UpsampleNearest: PyUpsampleNearestFixed, DelayLine: PyDelayLineFixed,
        ChannelDense: PyChannelDenseFixed, MemmapSource: PyMemmapSourceFixed, FusedStage: PyFusedStageModel,
        UpsampleZeros: PyUpsampleZerosFixed,
    },
}


def model_of(proc: AbstractProcess, mode: str) -> type[PyLoihiProcessModel]:
    """The Loihi-protocol model of ``proc`` in ``mode``; a ``KeyError`` naming the class if it has none."""
    try:
        return MODELS[mode][type(proc)]
    except KeyError:
        raise KeyError(f"{proc.name}: no {mode} model for {type(proc).__name__}") from None


def model_map(procs: Iterable[AbstractProcess], mode: str, protocol: str = "loihi") -> dict:
    """``{process: model}`` for every process of a network, all Loihi-protocol or all asynchronous
    (:mod:`.asynchronous`): never a mix, which would hang."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    wrap = as_async if protocol == "async" else (lambda m: m)
    return {p: wrap(model_of(p, mode)) for p in procs}
