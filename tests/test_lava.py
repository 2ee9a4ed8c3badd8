"""Lava simulation: the fast conv model, spike-exact agreement with PyTorch, clean shutdown.

* The im2col conv model (``FastConvModelFloat``) gives the same currents as Lava's stock
  ``PyConvModelFloat`` on the same ``Conv`` process, and ``conv_whc``/``correlation_weight``
  are PyTorch's ``conv2d`` after the layout conversion of the builder.
* In ``floating_pt`` every neuron group of the tiny UNet (with and without TSM, batch 1
  and 2, two calls at different t) spikes exactly as in the PyTorch executor of the same
  graph; so do the plain spiking CNNs (no host side) through :class:`LavaNetwork`.
* Lava runs one OS process per Lava process: leaving a ``with`` block, an error, a bad
  input, Ctrl-C in the middle of a run and Ctrl-C of a looping script all leave no process behind.
* The builder's passes (without compiling): its process table, the convs' read windows and
  delay lines; the one rounding shift of the fixed-point models; and ``fixed_point`` imports
  without Lava.

Everything runs under a deadline (SIGALRM; Ctrl-C test: subprocess timeouts), so a hung
Lava runtime fails the test instead of hanging the suite.  Runtime about 2 min on 2 cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from helpers import is_live, proc_table
from torch.nn import functional as F

from sdm.export.execute import GraphDenoiser, GraphModule
from sdm.export.ir import AnalogInput, Conv, IFNeurons, Output
from sdm.export.lower import lower_unet
from sdm.neuromorphic.builder import build, ir_shape, lava_conv_weight, lava_shape, whc
from sdm.neuromorphic.fixed_point import STATE_MAX, STATE_MIN, round_shift
from sdm.neuromorphic.lava_models.conv_model import (
    READ_WINDOW,
    FastConvModelFloat,
    ReadWindow,
    conv_whc,
    correlation_weight,
)
from sdm.neuromorphic.simulator import LavaDenoiser, LavaNetwork
from sdm.testing.spiking_cnn import CNNConfig, SpikingCNN, lower_spiking_cnn
from sdm.testing.weights import randomise
from sdm.train.unet import SpikingUNet, UNetConfig

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc"),
    # Lava's model search imports every module next to a process class and warns about the ones it cannot
    pytest.mark.filterwarnings("ignore:Cannot import module"),
]

TINY = dict(img_ch=1, img_size=8, ch=4, ch_mult=(1, 2), num_res_blocks=1, T=2)
SMALLEST = dict(img_ch=1, img_size=8, ch=4, ch_mult=(1,), num_res_blocks=1, T=2)  # lifecycle tests: 47 processes
CALLS = ((10, 1), (700, 2))  # (diffusion step t, input seed) of the two denoiser calls


# ----- helpers --------------------------------------------------------------------------------
@contextlib.contextmanager
def deadline(seconds: float, what: str = "Lava"):
    """Raise TimeoutError in the main thread after ``seconds`` (blocked Lava waits are interruptible)."""

    def expire(signum, frame):
        raise TimeoutError(f"{what} did not finish within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _is_resource_tracker(info) -> bool:
    # multiprocessing's per-interpreter helper: started with the first shared memory, lives until exit
    return "multiprocessing.resource_tracker" in info["cmd"]


def descendants(pid: int | None = None) -> dict[int, dict]:
    """Live descendants of ``pid`` (default: this process), without multiprocessing's resource tracker."""
    pid = os.getpid() if pid is None else pid
    table = proc_table()
    children: dict[int, list[int]] = {}
    for p, info in table.items():
        children.setdefault(info["ppid"], []).append(p)
    found, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found[p] = table[p]
        todo.extend(children.get(p, []))
    return {p: i for p, i in found.items() if is_live(i) and not _is_resource_tracker(i)}


def wait_no_new_descendants(before: set[int], grace: float = 10.0) -> dict[int, dict]:
    """Live descendants not in ``before`` after up to ``grace`` seconds (empty when all are gone)."""
    end = time.monotonic() + grace
    while True:
        left = {p: i for p, i in descendants().items() if p not in before}
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def _graph(cfg: dict, tsm: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = randomise(SpikingUNet(UNetConfig(**cfg)), seed=seed, tsm=tsm)
    return lower_unet(model, dtype=np.float64)


def _images(cfg: dict, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg["img_ch"], cfg["img_size"], cfg["img_size"], generator=g, dtype=torch.float64)


# ----- (a) the fast conv model ----------------------------------------------------------------
IN_WHC = (7, 6, 3)  # non-square input, so that W/H mix-ups show

# name: (torch kernel (kH, kW), stride (sH, sW), padding (pH, pW), C_out)
CONV_CASES = {
    "3x3_s1_p1": ((3, 3), (1, 1), (1, 1), 4),
    "3x3_s2_p1": ((3, 3), (2, 2), (1, 1), 5),
    "1x1": ((1, 1), (1, 1), (0, 0), 4),
    "3x2_s1x2_p1x0": ((3, 2), (1, 2), (1, 0), 2),
}


def _torch_conv_whc(x_whc: np.ndarray, weight: np.ndarray, stride, padding) -> np.ndarray:
    """PyTorch correlation of a (W, H, C) input with a (C_out, C_in, kH, kW) kernel -> (W', H', C_out)."""
    x = torch.from_numpy(np.ascontiguousarray(x_whc.transpose(2, 1, 0)))[None]
    y = F.conv2d(x, torch.from_numpy(weight), stride=stride, padding=padding)[0]
    return y.numpy().transpose(2, 1, 0)


def _conv_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(cout, IN_WHC[2], *k)) for name, (k, _, _, cout) in CONV_CASES.items()}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_whc_is_torch_correlation(case):
    k, stride, padding, cout = CONV_CASES[case]
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(cout, IN_WHC[2], *k))
    x = rng.normal(size=IN_WHC)
    lava_w = lava_conv_weight(weight)
    assert lava_w.shape == (cout, k[1], k[0], IN_WHC[2])  # Lava's (C_out, kW, kH, C_in)
    y = conv_whc(x, correlation_weight(lava_w), kernel=lava_w.shape[1:3], stride=stride[::-1], padding=padding[::-1])
    ref = _torch_conv_whc(x, weight, stride, padding)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)


def _run_conv_net(data: np.ndarray, graded: bool, fast: bool) -> dict[str, np.ndarray]:
    """RingBuffer(data) -> one Lava ``Conv`` per case -> sink RingBuffers; returns every sink's record."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.models import PyConvModelFloat
    from lava.proc.conv.process import Conv
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    steps = data.shape[-1]
    source = Source(data=data)
    sinks = {}
    for name, weight in _conv_weights().items():
        _, stride, padding, _ = CONV_CASES[name]
        conv = Conv(weight=lava_conv_weight(weight), input_shape=IN_WHC, stride=stride[::-1], padding=padding[::-1],
                    num_message_bits=24 if graded else 0)
        sinks[name] = Sink(shape=conv.a_out.shape, buffer=steps)
        source.s_out.connect(conv.s_in)
        conv.a_out.connect(sinks[name].a_in)
    model = FastConvModelFloat if fast else PyConvModelFloat  # the stock one is what select_tag alone picks
    cfg = Loihi2SimCfg(select_tag="floating_pt", exception_proc_model_map={Conv: model})
    try:
        source.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        return {name: sink.data.get() for name, sink in sinks.items()}
    finally:
        source.stop()


@pytest.mark.parametrize("graded", [False, True], ids=["spikes", "graded"])
def test_fast_conv_model_equals_stock(graded):
    steps = 5
    rng = np.random.default_rng(2)
    if graded:
        data = rng.normal(size=(*IN_WHC, steps)) * 3
    else:
        data = (rng.random(size=(*IN_WHC, steps)) < 0.3).astype(float)
    before = set(descendants())
    with deadline(180):
        stock = _run_conv_net(data, graded, fast=False)
        fast = _run_conv_net(data, graded, fast=True)
    for name in CONV_CASES:
        np.testing.assert_allclose(fast[name], stock[name], rtol=0, atol=1e-12, err_msg=name)
        # and both are PyTorch's correlation of the previous step's input (one step synaptic latency)
        _, stride, padding, _ = CONV_CASES[name]
        weight = _conv_weights()[name]
        assert np.all(fast[name][..., 0] == 0)
        for k in range(1, steps):
            ref = _torch_conv_whc(data[..., k - 1], weight, stride, padding)
            np.testing.assert_allclose(fast[name][..., k], ref, rtol=0, atol=1e-12, err_msg=f"{name} step {k}")
        assert np.abs(fast[name]).max() > 0.5
    assert not wait_no_new_descendants(before)


# ----- (b) Lava spikes == PyTorch spikes ------------------------------------------------------
@pytest.fixture(scope="module", params=[(False, 1), (False, 2), (True, 1), (True, 2)],
                ids=["plain-b1", "plain-b2", "tsm-b1", "tsm-b2"])
def unet_runs(request):
    """Two denoiser calls of the tiny UNet in Lava and in PyTorch (float64); the simulator is
    closed before the tests look at the records, so only one is alive at a time."""
    tsm, batch = request.param
    graph = _graph(TINY, tsm=tsm)
    ref = GraphDenoiser(graph, torch.float64)
    ref.record = True
    runs = []
    with deadline(300), LavaDenoiser(graph, batch=batch, record_spikes=True) as sim:
        for t, seed in CALLS:
            x, tt = _images(TINY, batch, seed), torch.full((batch,), t)
            eps = sim(x, tt)
            eps_ref = ref(x, tt)
            run = dict(t=t, eps=eps, eps_ref=eps_ref, spikes={n: s.copy() for n, s in sim.last_spikes.items()},
                       counts={n: c.copy() for n, c in sim.last_counts.items()},
                       spikes_ref={n: s.clone() for n, s in ref.spikes.items()})
            # the graph output before the host tail (eps of a randomised net hardly depends on x)
            with torch.no_grad():
                temb = F.silu(sim.host.time_embedding(tt[:1]))[0].numpy()
            run["h"] = sim.run_graph(x, temb)
            run["h_ref"] = ref.run(ref.denoiser_inputs(x, tt))
            run["eps_from_h"] = sim.host.tail(run["h"])
            runs.append(run)
    return dict(tsm=tsm, batch=batch, runs=runs)


def test_unet_spikes_identical(unet_runs):
    for run in unet_runs["runs"]:
        assert set(run["spikes"]) == set(run["spikes_ref"])
        total = 0
        for name, ref in run["spikes_ref"].items():
            got = torch.from_numpy(run["spikes"][name])
            assert got.shape == ref.shape, name
            bad = int((got != ref).sum())
            assert bad == 0, f"t={run['t']}: {name}: {bad} of {ref.numel()} spikes differ"
            total += int(ref.sum())
        assert total > 100, "too few spikes for a meaningful comparison"


def test_unet_eps_close(unet_runs):
    for run in unet_runs["runs"]:
        assert run["eps"].shape == run["eps_ref"].shape == (unet_runs["batch"], TINY["img_ch"], 8, 8)
        err = (run["eps"] - run["eps_ref"]).abs().max().item()
        assert err < 1e-5, f"t={run['t']}: eps differs by {err}"
        assert run["h"].shape == run["h_ref"].shape == (TINY["T"], unet_runs["batch"], 4, 8, 8)
        err = (run["h"] - run["h_ref"]).abs().max().item()
        assert err < 1e-9 * max(1.0, run["h_ref"].abs().max().item()), f"t={run['t']}: graph output differs by {err}"
        torch.testing.assert_close(run["eps_from_h"], run["eps"], rtol=0, atol=1e-12)  # a repeated call is identical
    # the two calls really differ (other t, other x): the second is no replay of the first
    a, b = unet_runs["runs"]
    assert (a["h"] - b["h"]).abs().max() > 0.1
    differ = (int((torch.from_numpy(a["spikes"][n]) != torch.from_numpy(b["spikes"][n])).sum()) for n in a["spikes"])
    assert sum(differ) > 0


def test_unet_counts_are_spike_sums(unet_runs):
    B, T = unet_runs["batch"], TINY["T"]
    for run in unet_runs["runs"]:
        assert set(run["counts"]) == set(run["spikes"])
        for name, counts in run["counts"].items():
            assert counts.shape == (B, T), name
            s = run["spikes"][name]  # [T, B, C, H, W]
            np.testing.assert_array_equal(counts, s.reshape(T, B, -1).sum(axis=2).T, err_msg=name)
            np.testing.assert_array_equal(counts, run["spikes_ref"][name].flatten(2).sum(2).T.numpy(), err_msg=name)


@pytest.mark.parametrize("residual", [False, True], ids=["sequential", "residual"])
def test_spiking_cnn_spikes_identical(residual):
    """A host-less graph (plain spiking CNN) through :class:`LavaNetwork`."""
    cfg = CNNConfig(img_ch=1, img_size=8, channels=(4, 4, 4) if residual else (4, 4, 8), strides=(1, 2), T=3,
                    residual=residual)
    torch.manual_seed(0)
    graph = lower_spiking_cnn(randomise(SpikingCNN(cfg)), dtype=np.float64)
    assert graph.host is None
    ref = GraphModule(graph, cfg.T, torch.float64)
    ref.record = True
    batch = 2
    with deadline(180), LavaNetwork(graph, cfg.T, batch=batch, record_spikes=True) as net:
        for seed in (1, 2):
            x = _images(dict(img_ch=1, img_size=8), batch, seed) * 2
            out = net.run_graph(x)
            out_ref = ref.run({"x": x})
            size = 8 if residual else 4  # the residual stages keep the resolution
            assert out.shape == out_ref.shape == (cfg.T, batch, cfg.channels[-1], size, size)
            assert (out - out_ref).abs().max().item() < 1e-9
            assert set(net.last_spikes) == set(ref.spikes) and len(ref.spikes) == (4 if residual else 2)
            for name, s in ref.spikes.items():
                assert int((torch.from_numpy(net.last_spikes[name]) != s).sum()) == 0, name
                assert s.sum() > 0, name
                np.testing.assert_array_equal(net.last_counts[name], s.flatten(2).sum(2).T.numpy())


# ----- (c) clean shutdown ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_graph():
    return _graph(SMALLEST)


def _x_t(batch=1, t=5):
    return _images(SMALLEST, batch, 3), torch.full((batch,), t)


def test_with_block_leaves_no_processes(small_graph):
    before = set(descendants())
    with deadline(180):
        with LavaDenoiser(small_graph, batch=1) as sim:
            sim(*_x_t())
            started = {p for p in descendants() if p not in before}
            assert len(started) >= sim.num_processes  # one OS process per Lava process (+ runtime service, ...)
        assert sim.closed
    assert not wait_no_new_descendants(before)
    with pytest.raises(RuntimeError, match="closed"):
        sim(*_x_t())


def test_exception_in_with_block_leaves_no_processes(small_graph):
    before = set(descendants())
    with deadline(180):
        with pytest.raises(KeyError, match="boom"):
            with LavaDenoiser(small_graph, batch=1) as sim:
                sim(*_x_t())
                assert len(set(descendants()) - before) >= sim.num_processes
                raise KeyError("boom")
    assert sim.closed
    assert not wait_no_new_descendants(before)


def test_bad_input_raises_and_closes(small_graph):
    before = set(descendants())
    with deadline(180):
        sim = LavaDenoiser(small_graph, batch=2)
        try:
            sim(*_x_t(batch=2))  # compiled and running
            assert len(set(descendants()) - before) >= sim.num_processes
            with pytest.raises(ValueError, match="batches of 2"):
                sim(*_x_t(batch=3))
        finally:
            sim.close()
            sim.close()  # idempotent
    assert sim.closed
    assert not wait_no_new_descendants(before)


def test_interrupt_inside_a_run_leaves_no_processes(small_graph):
    """Ctrl-C right after the host told the runtime to run (its processes are mid-run, nobody waits for
    their answers) leaves the runtime's message exchange half-way; Lava's own stop() would then wait
    forever.  Closing must still end every process."""
    before = set(descendants())
    with deadline(180):
        sim = LavaDenoiser(small_graph, batch=1)
        try:
            sim(*_x_t())
            port = sim.net.source.runtime.runtime_to_service[0]  # host -> runtime service messages
            send = port.send

            def interrupted_send(msg):
                send(msg)  # the run's step count: the runtime service starts the run
                raise KeyboardInterrupt

            port.send = interrupted_send
            with pytest.raises(KeyboardInterrupt):
                sim(*_x_t())
            assert sim.closed
        finally:
            with deadline(30, "close after the interrupt"):
                sim.close()
    assert not wait_no_new_descendants(before)


CTRL_C_SCRIPT = """
import signal, sys, warnings
# As in an interactive terminal: Python only installs its KeyboardInterrupt handler when SIGINT is not
# ignored at start-up, and a test run started in the background (nohup, CI runners, `make test &`)
# passes an ignored SIGINT down to every child.
signal.signal(signal.SIGINT, signal.default_int_handler)
warnings.filterwarnings("ignore")
import numpy as np, torch
from sdm.testing.weights import randomise
from sdm.export.lower import lower_unet
from sdm.neuromorphic.simulator import LavaDenoiser
from sdm.train.unet import SpikingUNet, UNetConfig

cfg = UNetConfig(**{cfg!r})
graph = lower_unet(randomise(SpikingUNet(cfg)), dtype=np.float64)
sim = LavaDenoiser(graph, batch=1, build={build!r})
x = torch.randn(1, cfg.img_ch, cfg.img_size, cfg.img_size, dtype=torch.float64)
i = 0
while True:
    sim(x, torch.tensor([i % 1000]))
    if i == 0:
        print("FIRST_CALL_DONE", flush=True)
    i += 1
"""


@pytest.mark.parametrize("target,build", [("process", "loihi"), ("group", "loihi"), ("group", "fused")])
def test_ctrl_c_leaves_no_processes(tmp_path, target, build):
    """SIGINT while the simulator loops over calls: to the Python process only, or to its whole
    process group as a terminal's Ctrl-C does (then every Lava process gets it too); the loihi build
    (one process per layer) and the fused one (6 stage processes)."""
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT.format(cfg=SMALLEST, build=build)))
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=fo, stderr=fe, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    pgid = proc.pid  # start_new_session: its own process group

    def group():
        return {p: i for p, i in proc_table().items() if i["pgid"] == pgid and is_live(i)}

    try:
        end = time.monotonic() + 120
        while "FIRST_CALL_DONE" not in out.read_text():
            assert proc.poll() is None, f"script exited early ({proc.returncode}):\n{err.read_text()[-3000:]}"
            assert time.monotonic() < end, "no first call within 120 s"
            time.sleep(0.05)
        running = group()
        least = 40 if build == "loihi" else 6  # the Lava processes (+ runtime service, manager, the script)
        assert len(running) > least, f"expected the Lava processes in the group, found {len(running)}"
        if target == "group":
            os.killpg(pgid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the simulator did not exit within 60 s of SIGINT")
        assert rc != 0
        assert "KeyboardInterrupt" in err.read_text()
        end = time.monotonic() + 10  # reparented stragglers get a moment to finish
        while group() and time.monotonic() < end:
            time.sleep(0.1)
        left = group()
        assert not left, f"{len(left)} processes left behind: {list(left.items())[:3]}"
        table = proc_table()
        assert not [p for p, i in running.items()
                    if p in table and table[p]["start"] == i["start"] and is_live(table[p])]
    finally:
        if proc.poll() is None or group():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)


# ----- (d) the builder's passes, the fixed-point shift, Lava-free imports --------------------
def test_fixed_point_imports_without_lava():
    code = ("import sys, sdm.neuromorphic.fixed_point, sdm.neuromorphic; "
            "assert not any(m.startswith('lava') for m in sys.modules), sorted(m for m in sys.modules if 'lava' in m)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


def test_round_shift_rounds_half_up_and_clamps_to_24_bits():
    y = np.array([-7, -6, -5, -3, -2, -1, 0, 1, 2, 3, 5, 6, 7, 2 ** 30, -(2 ** 30)], dtype=np.int64)
    for exp in (-3, -2, -1):
        k = 2 ** -exp
        want = np.clip([(int(v) + k // 2) // k for v in y], STATE_MIN, STATE_MAX)  # floor(y / k + 1/2)
        got = round_shift(y, exp)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want, err_msg=f"exp {exp}")
    np.testing.assert_array_equal(round_shift(y[:-2], 2), y[:-2] * 4)
    np.testing.assert_array_equal(round_shift(y, 0), np.clip(y, STATE_MIN, STATE_MAX))
    assert round_shift(np.array([-3]), -1)[0] == -1 and round_shift(np.array([3]), -1)[0] == 2  # ties go up
    assert (STATE_MIN, STATE_MAX) == (-(2 ** 23), 2 ** 23 - 1)


def test_layout_shapes():
    assert lava_shape((3, 5, 7)) == (7, 5, 3) and ir_shape((7, 5, 3)) == (3, 5, 7)
    assert whc(np.zeros((3, 5, 7))).shape == lava_shape((3, 5, 7))


@pytest.fixture(scope="module")
def built_unet(tmp_path_factory):
    """The tiny UNet's process graph, built (not compiled: no OS process starts), batch 2."""
    graph = _graph(TINY)
    return graph, build(graph, TINY["T"], str(tmp_path_factory.mktemp("probes")), batch=2)


def test_build_passes(built_unet):
    graph, net = built_unet
    T, B = TINY["T"], 2
    assert net.window == B * T and net.run_length % net.window == 0
    assert net.run_length >= net.window + net.depth[net.output]
    # one process per node but the Output, the shared temb RingBuffer, one per delay line
    nodes = [n for n in graph.nodes.values() if not isinstance(n, Output)]
    assert set(net.procs) == {n.name for n in nodes}
    assert net.temb_source is not None
    assert net.num_processes == len(nodes) + 1 + len(net.delays) and net.delays
    assert set(net.neurons) == {n.name for n in graph.of_type(IFNeurons)}
    assert set(net.probes) == set(net.neurons) | {net.output}
    for name, node in graph.nodes.items():
        if isinstance(node, Conv):  # the explicit read-window parameter of the fast conv models
            assert net.procs[name].proc_params[READ_WINDOW] == ReadWindow(net.depth[name], net.window, net.run_length)
    for w in net.wires:  # every delay closes the gap to the destination's depth
        if w.line is not None:
            conv = isinstance(graph.nodes[w.dst], Conv)
            assert w.delay == net.depth[w.dst] - net.depth[w.src] - conv > 0
            assert w.line.proc_params["delay"] == w.delay
    kinds = {type(p).__name__ for p in net.procs.values()}
    assert {"MemmapSource", "ChannelDense", "Conv", "RecordingLIFReset", "AnalogJunction"} <= kinds
    assert set(net.inputs) == {"image", "temb"} and net.inputs["image"].shape == (B, *lava_shape((1, 8, 8)))


def test_build_table(built_unet):
    graph, net = built_unet
    table = str(net)
    assert table == net.table()
    lines = table.splitlines()
    header, rule, rows, footer = lines[0], lines[1], lines[2:-1], lines[-1]
    assert header.split()[:5] == ["name", "process", "shape", "depth", "lat"] and set(rule) <= {"-", " "}
    assert len(rows) == len(net.procs) + 1  # + the temb source; delay lines are listed on their consumers
    assert sum(r.count("+") for r in rows) == len(net.delays)
    by_name = {r.split()[0]: r.split() for r in rows}
    image = next(n.name for n in graph.of_type(AnalogInput) if n.kind == "image")
    assert by_name[image][1:5] == ["MemmapSource", "x".join(map(str, lava_shape(graph.nodes[image].shape))), "0", "0"]
    for name, node in graph.nodes.items():
        if isinstance(node, Conv):
            assert by_name[name][1] == "Conv" and by_name[name][4] == "1"  # a synapse: one step of latency
            assert by_name[name][3] == str(net.depth[name])
        elif isinstance(node, IFNeurons):
            assert by_name[name][1:3] == ["RecordingLIFReset", "x".join(map(str, lava_shape(node.shape)))]
            assert by_name[name][4] == "0"
    assert footer.startswith(f"{net.num_processes} Lava processes ({len(net.delays)} delay lines); {net.run_length} ")
