"""One Lava process for a stage of several IR layers: the fused build (docs/lava-mapping.md).

A :class:`FusedStage` runs, in every Lava step, one spiking step of each of its layers in
topological order with no latency between them, so a denoiser call takes T Lava steps whatever
the depth of the graph, and the batch is an array dimension.  Its layers are the loihi build's own
process models (the same classes and parameters, made by the builder's factories and described by
a :class:`LayerSpec` each), driven through local ports instead of Lava channels:

* neurons, junctions, TSM gains, upsamplings: their own ``run_spk``, with the stage's ``time_step``
  (so the window reset at local step 0 and the TSM step index are the models' own);
* convs and time-embedding synapses: their ``synapse``, the same arithmetic as their ``run_spk``
  without the step of latency;
* the image and the time embedding: the rows of their input files.

So the neuron, conv and fixed-point arithmetic exist once, in ``processes.py`` and
``conv_model.py``: a fixed_pt stage runs Lava's bit-accurate LIF and the integer conv exactly as the
loihi build does.  A local port reproduces what a Lava channel does to the values: what a layer
sends is cast to the type of its out port (``LavaPyType``), what it receives is the sum of its
inputs added to zeros of its in port's type, in edge order, as ``PyInPort.recv`` does.

Batch: every value is ``(B, W, H, C)``; parameter Vars broadcast, and the Vars listed in
``LayerSpec.state`` (a neuron's ``u`` and ``v``) get the batch dimension.

Between stages one packed float64 vector per Lava step (``a_in`` / ``a_out``) carries the values
later stages read, skips included (forwarded stage to stage, so the stages form one chain).
Records: each neuron group's spikes and the output junction's values go straight into
``(B*T, W, H, C)`` memory maps, the loihi build's probe layout (image ``b``, step ``n`` at row
``b*T + n``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

KINDS = ("image", "vector", "synapse", "ported")


@dataclass
class LayerSpec:
    """One layer of a stage: a loihi-build process model and what its process would give it.

    ``kind``: ``image`` (the batch of images of an input file), ``vector`` (the one row of an input
    file: the time embedding), ``synapse`` (a conv or time-embedding synapse: ``model.synapse``) or
    ``ported`` (``model.run_spk`` through local ports).  ``inputs``: the names whose values it sums,
    in edge order.  ``record``: the probe file its output goes into (``""``: none)."""

    name: str
    kind: str
    model: type
    params: object  # the process's ProcessParameters
    vars: dict[str, tuple[tuple[int, ...], object]]  # Var name -> (shape, init)
    in_ports: dict[str, tuple[int, ...]]
    out_ports: dict[str, tuple[int, ...]]
    inputs: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    record: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: layer kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if len(self.out_ports) != 1 or len(self.in_ports) > 1:
            raise ValueError(f"{self.name}: a fused layer has one out port and at most one in port")

    @property
    def shape(self) -> tuple[int, ...]:
        """The output shape of one image (Lava's (W, H, C))."""
        return next(iter(self.out_ports.values()))


def _lava_type(model: type, name: str) -> LavaPyType:
    return getattr(model, name)


@dataclass(frozen=True)
class BusSlot:
    """Where a value sits in the packed float64 vector between two stages, and the type its producer's
    channel carries (int32 in fixed point: exact in float64, cast back on arrival)."""

    name: str
    shape: tuple[int, ...]  # (B, W, H, C)
    offset: int
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def bus_layout(specs: list[LayerSpec], batch: int) -> list[BusSlot]:
    """The packed layout of the outputs of ``specs`` (each ``(B, *shape)``), in that order."""
    slots, offset = [], 0
    for spec in specs:
        out = next(iter(spec.out_ports))
        slot = BusSlot(spec.name, (batch, *spec.shape), offset, np.dtype(_lava_type(spec.model, out).d_type).str)
        slots.append(slot)
        offset += slot.size
    return slots


def bus_size(layout: list[BusSlot]) -> int:
    """Lava ports need a size >= 1: an empty bus is one unused value."""
    return max(1, sum(s.size for s in layout))


class FusedStage(AbstractProcess):
    """Layers ``layers`` (:class:`LayerSpec`, topological order) run for one spiking step per Lava step.

    ``bus_in`` / ``bus_out``: the layouts of the packed vectors from the previous stage and to the
    next one; ``T`` spiking steps per call, ``batch`` images."""

    def __init__(self, *, layers: list[LayerSpec], bus_in: list[BusSlot], bus_out: list[BusSlot], T: int,
                 batch: int, **kwargs):
        super().__init__(layers=layers, bus_in=bus_in, bus_out=bus_out, T=T, batch=batch, **kwargs)
        self.a_in = InPort(shape=(bus_size(bus_in),))
        self.a_out = OutPort(shape=(bus_size(bus_out),))


# ----- local ports: what a Lava channel does to values -----------------------------------------
class _LocalInPort:
    """Stands in for a layer's ``PyInPort``: ``recv()`` gives what the stage put there."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.value = tuple(shape), np.dtype(dtype), None

    def recv(self) -> np.ndarray:
        return self.value


class _LocalOutPort:
    """Stands in for a layer's ``PyOutPort``: ``send`` keeps the value, cast as the channel would."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.value = tuple(shape), np.dtype(dtype), None

    def send(self, data) -> None:
        self.value = np.asarray(data).astype(self.dtype)


def instantiate(spec: LayerSpec, batch: int):
    """The layer's process model, its Vars set as Lava's ``PyProcessBuilder`` sets them (an ndarray of
    the ``LavaPyType``'s dtype, or the init as is) and local ports in place of its Lava ports."""
    pm = spec.model(spec.params)
    for name, (shape, init) in spec.vars.items():
        lt = _lava_type(spec.model, name)
        if issubclass(lt.cls, np.ndarray):
            var = np.ndarray((batch, *shape) if name in spec.state else shape, lt.d_type)
            var[:] = init
        else:
            var = init
        setattr(pm, name, var)
    for name, shape in spec.in_ports.items():
        setattr(pm, name, _LocalInPort(shape, _lava_type(spec.model, name).d_type))
    for name, shape in spec.out_ports.items():
        setattr(pm, name, _LocalOutPort(shape, _lava_type(spec.model, name).d_type))
    pm.time_step = 0
    return pm


@dataclass
class _Layer:
    """A layer as the stage runs it: its model instance and how one step is computed."""

    spec: LayerSpec
    model: object
    batch: int
    data: np.ndarray | None = None  # the input file (image and vector layers)
    record: np.ndarray | None = None  # (B, T, W, H, C) view of the probe file
    _in: _LocalInPort | None = field(default=None, repr=False)
    _out: _LocalOutPort | None = field(default=None, repr=False)

    def __post_init__(self):
        self._in = next((getattr(self.model, n) for n in self.spec.in_ports), None)
        self._out = getattr(self.model, next(iter(self.spec.out_ports)))
        if self.spec.kind in ("image", "vector"):
            self.data = np.load(self.spec.params["path"], mmap_mode="r")
        if self.spec.record:
            probe = np.load(self.spec.record, mmap_mode="r+")
            self.record = probe.reshape(self.batch, -1, *probe.shape[1:])

    def gather(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """The layer's input: its sources summed onto zeros of its in port's type and shape, in edge order
        (``PyInPort.recv``); broadcasting adds the batch dimension of the sources that have one (the time
        embedding has none: it is the same for every image of a call)."""
        first = values[self.spec.inputs[0]]
        if len(self.spec.inputs) == 1 and first.shape[-3:] == self._in.shape \
                and first.dtype == np.result_type(self._in.dtype, first.dtype):
            return first  # zeros + x is x (the layers never write into their input)
        acc = np.zeros(self._in.shape, dtype=self._in.dtype)
        for src in self.spec.inputs:
            acc = acc + values[src]
        return acc

    def step(self, values: dict[str, np.ndarray], time_step: int) -> np.ndarray:
        """This layer's output in Lava step ``time_step`` (from 1), as its out port's channel carries it."""
        kind = self.spec.kind
        if kind == "image":
            self._out.send(self.data)
        elif kind == "vector":
            self._out.send(self.data[0])
        elif kind == "synapse":
            self._out.send(self.model.synapse(self.gather(values)))
        else:
            self.model.time_step = time_step
            self._in.value = self.gather(values)
            self.model.run_spk()
        return self._out.value


@implements(proc=FusedStage, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PyFusedStageModel(PyLoihiProcessModel):
    """Both modes: the layers' own models carry the arithmetic (float or fixed point)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def _setup(self) -> None:
        p = self.proc_params
        self._T, self._batch = p["T"], p["batch"]
        self._layers = [_Layer(s, instantiate(s, self._batch), self._batch) for s in p["layers"]]
        self._bus_in, self._bus_out = p["bus_in"], p["bus_out"]

    def run_spk(self) -> None:
        if not hasattr(self, "_layers"):
            self._setup()
        bus = self.a_in.recv()
        values = {s.name: bus[s.offset:s.offset + s.size].reshape(s.shape).astype(s.dtype, copy=False)
                  for s in self._bus_in}
        n = (self.time_step - 1) % self._T
        for layer in self._layers:
            y = values[layer.spec.name] = layer.step(values, self.time_step)
            if layer.record is not None:
                layer.record[:, n] = y
        out = np.zeros(bus_size(self._bus_out))
        for s in self._bus_out:
            out[s.offset:s.offset + s.size] = np.broadcast_to(values[s.name], s.shape).ravel()
        self.a_out.send(out)
