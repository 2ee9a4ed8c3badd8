"""Running denoiser calls of a spiking graph in Lava's CPU simulator.

:class:`LavaDenoiser` compiles the process graph once (on the first call), then serves
calls ``eps = f(x_t, t)`` for a fixed batch size: the host computes the graded time-embedding
vector, writes it and ``x_t`` into the input files (memory maps the input processes read), runs
``run_length`` Lava steps, reads the recorded output window and applies the host-side
tail.

Two builds of the same graph (``build``): ``loihi``, one process per layer with aligned latencies
(:mod:`.builder`), and ``fused``, a few stage processes with zero internal latency
(:mod:`.fused`).  Two protocols (``protocol``): Lava's ``LoihiProtocol`` (a barrier every step) or
every process asynchronous (:mod:`.lava_models.asynchronous`); the same spikes either way.

It always shuts Lava down: on ``close()``, on leaving a ``with`` block, on errors, on Ctrl-C,
on SIGTERM and at interpreter exit; every exchange with the runtime is bounded
(:func:`exchange_timeout`), and a run killed outright is cleaned up by its children and the
next run (docs/lava-mapping.md, "Faults and clean-up").
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from sdm.errors import ConfigError
from sdm.export.execute import GraphDenoiser
from sdm.export.ir import AnalogInput, SNNGraph

from .builder import LavaBuildError, LavaGraph, check_host, whc
from .builder import build as build_network
from .fused import DEFAULT_STAGES, FusedGraph, build_fused
from .lava_runtime import (
    LavaTimeoutError,
    ensure_lava_runtime,
    hold_sigterm,
    recording_segments,
    release_sigterm,
    watchdog,
)
from .rundir import RunDir, sweep_stale

MODES = ("floating_pt", "fixed_pt")
BUILDS = ("loihi", "fused")
PROTOCOLS = ("loihi", "async")
# Without a protocol given: the loihi build keeps Lava's Loihi protocol (the graph a chip would run,
# step by step); the fused stages are a CPU device, and asynchronous they overlap on the cores and
# skip two management messages per stage and step (the same spikes: tests/test_lava_fused.py).
DEFAULT_PROTOCOL = {"loihi": "loihi", "fused": "async"}
TIMEOUT_ENV = "SDM_LAVA_TIMEOUT"  # seconds for every exchange with the runtime (0: unbounded)
TIMEOUT_BASE_S = 60.0  # every exchange
TIMEOUT_PER_PROCESS_STEP_S = 0.01  # a run: ~30x the 0.34 ms per process and step measured on 2 cores
TIMEOUT_PER_STAGE_STEP_S = 0.5  # a fused stage step computes many layers: ~30x the slowest measured
TIMEOUT_COMPILE_S = 600.0  # the first run also compiles and starts every process
TIMEOUT_STOP_S = 30.0  # an orderly stop (one message to and from every process), then by force
# Slots of every Lava channel.  Under LoihiProtocol at most one message is in flight; asynchronous
# processes may run ahead by this many steps.  Lava's default of 64 would give the large packed
# messages of the fused stages (up to MBs with a batch) ~100 MB of shared memory per channel.
FUSED_CHANNEL_SLOTS = 4
_OPEN: "weakref.WeakSet[LavaDenoiser]" = weakref.WeakSet()


@atexit.register
def _close_all():
    for sim in list(_OPEN):
        sim.close()


def _alive(proc) -> bool:
    try:
        return proc.is_alive()
    except ValueError:  # already joined and closed
        return False


@dataclass
class RuntimeInternals:
    """What shutting a Lava runtime down by force needs and Lava keeps private."""

    actors: list[mp.Process]  # the OS process of every Lava process (and of the runtime service)
    stops: list[Callable[[], object]] = field(default_factory=list)  # shared-memory and watchdog managers


def runtime_internals(runtime) -> RuntimeInternals:
    """The one place that reads Lava's private runtime attributes (lava-nc 0.10).

    Lava has no public API to list a runtime's OS processes or to stop its managers without its
    message protocol, and that protocol waits forever once a run was interrupted
    half-way or a process died: ``runtime._messaging_infrastructure`` (its ``actors`` and shared
    memory manager ``smm``) and ``runtime._watchdog_manager`` are read here and nowhere else.
    ``runtime=None`` (never compiled): nothing to stop."""
    if runtime is None:
        return RuntimeInternals(actors=[])
    infra = runtime._messaging_infrastructure
    stops = [infra.smm.shutdown] if infra.smm is not None else []
    return RuntimeInternals(actors=list(infra.actors), stops=stops + [runtime._watchdog_manager.stop])


def exchange_timeout(default: float) -> float | None:
    """The bound of one exchange with the runtime: ``default`` seconds, or ``$SDM_LAVA_TIMEOUT`` when set
    (``0``: no bound)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be >= 0 seconds, got {text!r}")
    return value or None


def _force_stop(runtime) -> None:
    """End a Lava runtime without its message protocol: terminate (then kill) every Lava process,
    then shut down its shared-memory and watchdog managers."""
    internals = runtime_internals(runtime)
    actors = [a for a in internals.actors if _alive(a)]
    for a in actors:
        a.terminate()
    for a in actors:
        mp.Process.join(a, 5)
        if _alive(a):
            a.kill()
            mp.Process.join(a, 5)
    for stop in internals.stops:
        try:
            stop()
        except Exception:
            pass


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


class LavaNetwork:
    """A spiking graph compiled to Lava: ``run_graph(x)`` gives the per-step output ``[T, B, C, H, W]``
    for images ``x [B, C, H, W]`` (and the time embedding ``temb`` when the graph has one).

    ``build``: ``loihi`` (one process per layer, latency-aligned) or ``fused`` (``stages`` stage
    processes, T Lava steps per call); ``protocol``: ``loihi`` or ``async`` (every process), by default
    :data:`DEFAULT_PROTOCOL` of the build."""

    _in_lava = False  # True while a message exchange with the Lava runtime is under way

    def __init__(self, graph: SNNGraph, T: int, batch: int = 1, mode: str = "floating_pt",
                 record_spikes: bool = True, threshold_scale: float = 1.0, plan=None, build: str = "loihi",
                 stages: int | None = None, protocol: str | None = None, varying_input: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        _check_choice("build", build, BUILDS)
        protocol = DEFAULT_PROTOCOL[build] if protocol is None else protocol
        _check_choice("protocol", protocol, PROTOCOLS)
        if stages is not None and build != "fused":
            raise ConfigError("--stages is an option of the fused build (--build fused)")
        if varying_input and build != "loihi":
            raise ConfigError("an input that changes from step to step ([T, ...]) runs in the loihi build "
                              "(--build loihi)")
        ensure_lava_runtime()
        if mode == "fixed_pt" and plan is None:
            from .fixed_point import FixedPointPlan

            plan = FixedPointPlan(graph)
        self.plan = plan if mode == "fixed_pt" else None
        self.graph = graph
        self.mode = mode
        self.build = build
        self.protocol = protocol
        self.batch = batch
        self.T = T
        sweep_stale()  # what killed runs left behind
        self._run_dir = RunDir()
        options = dict(batch=batch, record_spikes=record_spikes, threshold_scale=threshold_scale, plan=self.plan)
        try:
            if build == "fused":
                self.net: LavaGraph | FusedGraph = build_fused(graph, self.T, self._run_dir.path, **options,
                                                               stages=DEFAULT_STAGES if stages is None else stages)
            else:
                self.net = build_network(graph, self.T, self._run_dir.path, **options, varying_input=varying_input)
        except BaseException:
            self._run_dir.cleanup()
            raise
        self.record_spikes = record_spikes
        self.compiled = False
        self.closed = False
        self.compile_seconds = None
        self.last_counts: dict[str, np.ndarray] = {}
        self.timing = {"set_inputs": 0.0, "run": 0.0, "read_records": 0.0}  # seconds, summed over calls
        self.last_spikes: dict[str, np.ndarray] = {}
        _OPEN.add(self)
        hold_sigterm()  # SIGTERM now shuts Lava down as Ctrl-C does

    # ----- lifecycle --------------------------------------------------------------------------
    def _run_cfg(self):
        """Every process with its model, instance by instance (``lava_models.catalog``): no model search,
        and under ``protocol="async"`` every process converted, never a mix."""
        from lava.magma.core.run_configs import Loihi2SimCfg

        from .lava_models.catalog import model_map

        try:
            models = model_map(self.net.processes(), self.mode, self.protocol)
        except KeyError as e:
            raise LavaBuildError(e.args[0]) from None
        return Loihi2SimCfg(select_tag=self.mode, exception_proc_model_map=models)

    def _compile_config(self) -> dict | None:
        return {"pypy_channel_size": FUSED_CHANNEL_SLOTS} if self.build == "fused" else None

    @property
    def run_dir(self) -> str:
        """The run folder (probes, owner marker, segment log; :mod:`.rundir`)."""
        return self._run_dir.path

    def run_timeout(self, first: bool = False) -> float | None:
        """The bound of one run: ``60 s + 10 ms x processes x steps`` (fused: 500 ms per stage and step, times
        the batch), + 600 s for the first, which compiles."""
        per = TIMEOUT_PER_STAGE_STEP_S * self.batch if self.build == "fused" else TIMEOUT_PER_PROCESS_STEP_S
        bound = TIMEOUT_BASE_S + per * self.num_processes * self.net.run_length
        return exchange_timeout(bound + (TIMEOUT_COMPILE_S if first else 0.0))

    def _exchange(self, what: str, seconds: float | None):
        """A bounded many-message exchange with the runtime; past the bound Lava is stopped by force."""
        self._in_lava = True
        return watchdog(seconds, what)

    def _run(self, first: bool = False):
        from lava.magma.core.run_conditions import RunSteps

        steps = self.net.run_length
        with self._exchange(f"a Lava run of {steps} steps ({self.num_processes} processes)", self.run_timeout(first)):
            self.net.source.run(condition=RunSteps(num_steps=steps), run_cfg=self._run_cfg(),
                                compile_config=self._compile_config())
        self._in_lava = False

    def close(self) -> None:
        """Stop the Lava runtime (idempotent)."""
        if self.closed:
            return
        self.closed = True
        _OPEN.discard(self)
        try:
            self._stop_runtime()
        finally:
            self.net.probes.clear()
            self._run_dir.cleanup()  # the probes, and any segment of this run that is still there
            release_sigterm()

    def _stop_runtime(self) -> None:
        if self.compiled:
            runtime = self.net.source.runtime
            actors = runtime_internals(runtime).actors
            # A run interrupted half-way (Ctrl-C, an error) leaves the runtime's message exchange out of
            # step, and a dead process never answers: Lava's stop() would wait forever.  A Ctrl-C or
            # SIGTERM on its way out may also have reached Lava's processes (a terminal's Ctrl-C goes to the
            # whole process group) while the host was between runs: they are dying, so stop by force too.
            interrupted = isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit))
            if self._in_lava or interrupted or not all(_alive(a) for a in actors):
                _force_stop(runtime)
                return
            try:
                with watchdog(exchange_timeout(TIMEOUT_STOP_S), "stopping Lava"):  # a process may die meanwhile
                    self.net.source.stop()
            except Exception:  # the runtime may already be down after an error, or the stop timed out
                _force_stop(runtime)
            except BaseException:  # Ctrl-C or SIGTERM during the stop: finish it by force
                _force_stop(runtime)
                raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ----- one call ---------------------------------------------------------------------------
    @property
    def num_processes(self) -> int:
        return self.net.num_processes

    def set_inputs(self, x: torch.Tensor, temb: np.ndarray | None = None) -> None:
        """Image batch ``x [B, C, H, W]``; ``temb``: the graded time-embedding vector ``swish(temb(t))``.

        Both go into the input files that the input processes (loihi) or stages (fused) read in the next
        run: plain memory writes, no exchange with the runtime (``Var.set`` sent one message per value)."""
        x = x.to(torch.float64)
        B = self.batch
        if x.dim() != 4 or x.shape[0] != B:
            raise ValueError(f"this simulator was built for batches of {B} images, got shape {list(x.shape)}")
        image_shape = next(n.shape for n in self.graph.of_type(AnalogInput) if n.kind == "image")
        if tuple(x.shape[1:]) != tuple(image_shape):
            raise ValueError(f"this simulator takes images of shape {list(image_shape)}, got {list(x.shape[1:])}")
        files = self.net.inputs
        data = np.stack([whc(img) for img in x.numpy()])  # (B, W, H, C)
        graded = None
        if "temb" in files:
            graded = np.asarray(temb, dtype=np.float64).reshape(1, -1)
            if graded.shape != files["temb"].shape:
                raise ValueError(f"the time embedding has {graded.shape[1]} values, the network takes "
                                 f"{files['temb'].shape[1]}")
        if self.plan is not None:
            data = self.plan.quantize_input(data)
            graded = None if graded is None else self.plan.current(graded)
        files["image"][:] = data
        if graded is not None:
            files["temb"][:] = graded

    def run_graph(self, x: torch.Tensor, temb: np.ndarray | None = None) -> torch.Tensor:
        """Per-step graph output ``[T, B, C, H, W]`` from Lava."""
        if self.closed:
            raise RuntimeError("this Lava simulator is closed")
        if not self.compiled:
            t0 = time.perf_counter()
            self._run_first(x, temb)
            self.compile_seconds = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            try:
                self.set_inputs(x, temb)
                t1 = time.perf_counter()
                self._run()
            except LavaTimeoutError:
                self.close()
                raise
            self.timing["set_inputs"] += t1 - t0
            self.timing["run"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        rec = np.array(self.net.probes[self.net.output])  # (B*T, W, H, C)
        if self.plan is not None:
            rec = self.plan.dequantize_output(rec)
        self._collect_records()
        self.timing["read_records"] += time.perf_counter() - t0
        out = torch.from_numpy(rec.transpose(0, 3, 2, 1).copy())  # (B*T, C, H, W)
        return out.view(self.batch, self.T, *out.shape[1:]).transpose(0, 1)

    def _run_first(self, x, temb):
        # Lava compiles on the first run; the inputs are files, so they are in place before it.
        self.set_inputs(x, temb)
        try:
            run_dir = self._run_dir
            with recording_segments(run_dir.segments_path, run_dir.folders_path):  # the runtime's segments
                self._run(first=True)
            self.compiled = True
        except BaseException:
            self.compiled = True
            self.close()
            raise

    def _collect_records(self):
        """Spikes ``[T, B, C, H, W]`` and counts ``[B, T]`` of every neuron group for the last call."""
        if not self.record_spikes:
            return
        self.last_spikes, self.last_counts = {}, {}
        for n in self.net.neurons:
            s = np.array(self.net.probes[n]).transpose(0, 3, 2, 1)  # (B*T, C, H, W)
            s = s.reshape(self.batch, self.T, *s.shape[1:])
            self.last_counts[n] = np.abs(s).reshape(self.batch, self.T, -1).sum(axis=2).astype(np.int64)  # events
            self.last_spikes[n] = s.transpose(1, 0, 2, 3, 4)


class LavaDenoiser(LavaNetwork):
    """``eps = f(x_t, t)`` with the spiking graph in Lava and the host-side parts in PyTorch."""

    def __init__(self, graph: SNNGraph, batch: int = 1, mode: str = "floating_pt", record_spikes: bool = True,
                 threshold_scale: float = 1.0, build: str = "loihi", stages: int | None = None,
                 protocol: str | None = None):
        if graph.host is None:
            raise ValueError("the graph has no host-side parameters: not a denoiser")
        check_host(graph)
        self.host = GraphDenoiser(graph, dtype=torch.float64)
        self.host.threshold_scale = threshold_scale
        super().__init__(graph, graph.host.T, batch=batch, mode=mode, record_spikes=record_spikes,
                         threshold_scale=threshold_scale, build=build, stages=stages, protocol=protocol)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        try:
            if not torch.all(t == t[0]):
                raise ValueError("all images of a pipelined batch must be at the same diffusion step t")
            with torch.no_grad():
                temb = torch.nn.functional.silu(self.host.time_embedding(t[:1]))[0].numpy()
            h = self.run_graph(x, temb)
        except BaseException:
            self.close()
            raise
        with torch.no_grad():
            return self.host.tail(h)
