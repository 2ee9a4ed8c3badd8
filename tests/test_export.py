"""NIR export and import: exact round trip, standard compliance, bad input."""

import gzip
import io
import re
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from sdm.export.api import export_checkpoint, import_nir
from sdm.export.execute import GraphDenoiser, GraphModule
from sdm.export.ir import IFNeurons, TemporalAffine, Upsample
from sdm.export.lower import fold_batchnorm, lower_unet
from sdm.export.nir_format import HOST_GUARD, read_nir, write_nir
from sdm.export.verify import compare
from sdm.testing.oracles import if_step
from sdm.testing.spiking_cnn import CNNConfig, SpikingCNN, lower_spiking_cnn
from sdm.testing.weights import randomise
from sdm.train.checkpoint import save_checkpoint
from sdm.train.neuron import set_threshold_scale
from sdm.train.unet import SpikingUNet, UNetConfig

REFERENCE_SMALL = dict(img_ch=3, img_size=32, ch=8, ch_mult=(1, 2, 2, 4), num_res_blocks=2, T=4)
DEMO_LIKE = dict(img_ch=1, img_size=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, T=4)


def save_model(model, path, schedule=None):
    return save_checkpoint(path, {"model_config": model.cfg.to_dict(), "model": model.state_dict(),
                                  "diffusion": schedule or {"steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}})


def inputs(cfg, seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg["img_ch"], cfg["img_size"], cfg["img_size"], generator=g, dtype=torch.float64)
    return x, torch.tensor([0, 400, 999][:n])


@pytest.mark.parametrize("arch", ["reference-small", "demo"])
@pytest.mark.parametrize("tsm", [False, True])
def test_round_trip_identical_spikes(tmp_path, arch, tsm):
    cfg = REFERENCE_SMALL if arch == "reference-small" else DEMO_LIKE
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**cfg)), tsm=tsm)
    ckpt = save_model(model, tmp_path / "model.pt")
    summary = export_checkpoint(ckpt, tmp_path / "model.nir", dtype="float64")
    assert summary["extensions"] == (["temporal_affine", "upsample_nearest"] if tsm else ["upsample_nearest"])
    den = import_nir(tmp_path / "model.nir", dtype="float64")
    model = model.double()
    x, t = inputs(cfg)
    for scale in (1.0, 0.997, 1.003):
        set_threshold_scale(model, scale)
        den.threshold_scale = scale
        r = compare(model, den, x, t)
        assert r["total_mismatches"] == 0, {k: v for k, v in r["layers"].items() if v["mismatches"]}
        assert r["eps_max_abs_err"] < 1e-5
        assert sum(v["spikes"] for v in r["layers"].values()) > 0  # the comparison saw real activity


def test_threshold_scale_baked_into_file(tmp_path):
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**DEMO_LIKE)))
    ckpt = save_model(model, tmp_path / "model.pt")
    export_checkpoint(ckpt, tmp_path / "g.nir", dtype="float64", threshold_scale=0.99)
    graph = read_nir(tmp_path / "g.nir")
    assert all(np.all(n.threshold == 0.99) for n in graph.of_type(IFNeurons))
    assert graph.host.threshold_scale == 0.99
    steps = graph.host.schedule.steps
    assert steps == 1000 and isinstance(steps, int)  # a step count, not 1000.0
    set_threshold_scale(model.double(), 0.99)
    x, t = inputs(DEMO_LIKE)
    r = compare(model, GraphDenoiser(graph, torch.float64), x, t)
    assert r["total_mismatches"] == 0


def test_float32_export_agrees(tmp_path):
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**DEMO_LIKE)))
    export_checkpoint(save_model(model, tmp_path / "m.pt"), tmp_path / "m.nir")
    den = import_nir(tmp_path / "m.nir")
    x, t = inputs(DEMO_LIKE)
    r = compare(model, den, x.float(), t)
    steps = sum(v["neuron_steps"] for v in r["layers"].values())
    # float32 rounding of folded weights may move a spike that sits within ~1e-7 of threshold;
    # in float64 (above) nothing moves.
    assert r["total_mismatches"] <= 1e-4 * steps
    assert r["eps_max_abs_err"] < 1e-2


def test_fold_batchnorm_is_exact():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    bn = torch.nn.BatchNorm2d(4).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    w, b, shift = fold_batchnorm(conv, bn)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, w, b + shift, padding=1)
    torch.testing.assert_close(y, bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_graph_structure_and_standard_reader(tmp_path):
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**REFERENCE_SMALL)), tsm=True)
    graph = lower_unet(model)
    # concat splits: every up block has two neuron groups and split conv1 / shortcut convs
    assert "up.0.neuron1.h" in graph.nodes and "up.0.neuron1.skip" in graph.nodes
    assert "up.0.conv1.h" in graph.nodes and "up.0.shortcut.skip" in graph.nodes
    assert sum(1 for _ in graph.of_type(Upsample)) == 3
    assert sum(1 for _ in graph.of_type(TemporalAffine)) == 66  # 67 TSM convs, the tail's is on the host
    write_nir(graph, tmp_path / "g.nir")
    ng = nir.read(tmp_path / "g.nir")  # unmodified reader, type checking on
    ext = [n for k, n in ng.nodes.items() if isinstance(n, nir.NIRGraph) and k != HOST_GUARD]
    assert {n.metadata["sdm.extension"] for n in ext} == {"temporal_affine", "upsample_nearest"}
    assert ng.nodes[HOST_GUARD].metadata["sdm.guard"] == "host_inputs"  # the time-embedding inputs need the host
    assert ng.metadata["dt"] == 1.0 and ng.metadata["time_steps"] == 4
    assert {type(n).__name__ for n in ng.nodes.values()} == {"Input", "Conv2d", "IF", "Output", "NIRGraph"}


def test_unknown_reader_fails_loudly_on_extensions(tmp_path):
    import nirtorch

    torch.manual_seed(0)
    graph = lower_unet(randomise(SpikingUNet(UNetConfig(**DEMO_LIKE))))
    write_nir(graph, tmp_path / "g.nir")
    with pytest.raises(ValueError, match="groups must be a positive integer|Unknown node type"):
        nirtorch.nir_to_torch(nir.read(tmp_path / "g.nir"), node_map={nir.IF: lambda n: torch.nn.Identity(),
                                                                       nir.Scale: lambda n: torch.nn.Identity()})


class _NirtorchIF(torch.nn.Module):
    """A third-party style stateful IF cell for nirtorch, built from the NIR node's arrays."""

    def __init__(self, node):
        super().__init__()
        self.register_buffer("th", torch.as_tensor(node.v_threshold))
        self.spikes = []

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        s, v, _ = if_step(v, x, self.th)
        self.spikes.append(s)
        return s, v


class _NirtorchScale(torch.nn.Module):
    def __init__(self, node):
        super().__init__()
        self.register_buffer("s", torch.as_tensor(node.scale))

    def forward(self, x):
        return x * self.s


@pytest.mark.parametrize("residual", [True, False])
def test_third_party_nirtorch_reproduces_spikes(tmp_path, residual):
    torch.manual_seed(0)
    cfg = CNNConfig(channels=(8, 8, 8) if residual else (8, 8, 16), residual=residual, T=4)
    model = randomise(SpikingCNN(cfg)).double()
    graph = lower_spiking_cnn(model, dtype=np.float64)
    write_nir(graph, tmp_path / "cnn.nir")
    ng = nir.read(tmp_path / "cnn.nir")
    assert {type(n).__name__ for n in ng.nodes.values()} == {"Input", "Conv2d", "IF", "Output"}
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    ours = GraphModule(read_nir(tmp_path / "cnn.nir", require_host=False), T=4, dtype=torch.float64)
    ours.record = True
    out = ours.run({"x": x})
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-12)

    import nirtorch

    tm = nirtorch.nir_to_torch(ng, node_map={nir.IF: _NirtorchIF, nir.Scale: _NirtorchScale}, dtype=torch.float64)
    state, outs = None, []
    for _ in range(4):
        o, state = tm(x) if state is None else tm(x, state)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs), out, rtol=0, atol=1e-12)
    cells = {n: m for n, m in tm.named_modules() if isinstance(m, _NirtorchIF)}  # nirtorch: "." -> "_"
    ours_spikes = {k.replace(".", "_"): v for k, v in ours.spikes.items()}
    assert set(cells) == set(ours_spikes)
    for name, cell in cells.items():
        assert torch.equal(torch.stack(cell.spikes), ours_spikes[name]), name
    assert sum(int(s.sum()) for s in ours.spikes.values()) > 0


def test_export_size_and_speed(tmp_path):
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**DEMO_LIKE)))
    s = export_checkpoint(save_model(model, tmp_path / "m.pt"), tmp_path / "m.nir")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    gz = len(gzip.compress(buf.getvalue()))
    assert s["bytes"] < 1.6 * gz  # the file is about the size of the compressed weights
    assert s["seconds"] < 5


# ----- bad input ---------------------------------------------------------------------------
def _one_line_error(args, capsys):
    from sdm.cli import main

    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    return err


def test_bad_checkpoints(tmp_path, capsys):
    out = tmp_path / "out.nir"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a checkpoint")
    assert "junk.pt" in _one_line_error(["export-nir", str(junk), "-o", str(out)], capsys)
    torch.manual_seed(0)
    good = save_model(SpikingUNet(UNetConfig(**DEMO_LIKE)), tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "cut.pt" in _one_line_error(["export-nir", str(cut), "-o", str(out)], capsys)
    other = save_checkpoint(tmp_path / "other.pt", {"model_config": {"arch": "transformer", "layers": 12},
                                                    "model": {}})
    err = _one_line_error(["export-nir", str(other), "-o", str(out)], capsys)
    assert "other.pt" in err and "spiking UNet" in err
    assert not out.exists() and not list(tmp_path.glob(".out.nir*"))


def test_bad_nir_files(tmp_path, capsys):
    torch.manual_seed(0)
    graph = lower_unet(randomise(SpikingUNet(UNetConfig(**DEMO_LIKE))))
    good = write_nir(graph, tmp_path / "good.nir")
    cut = tmp_path / "cut.nir"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "cut.nir" in _one_line_error(["import-nir", str(cut)], capsys)
    # a node type NIR does not know
    import h5py

    unknown = tmp_path / "unknown.nir"
    unknown.write_bytes(good.read_bytes())
    with h5py.File(unknown, "r+") as f:
        del f["node/nodes/stem.neuron/type"]
        f["node/nodes/stem.neuron"].create_dataset("type", data="QuantumNeuron", dtype=h5py.string_dtype())
    err = _one_line_error(["import-nir", str(unknown)], capsys)
    assert "unknown.nir" in err and "QuantumNeuron" in err and "stem.neuron" in err
    # an extension this reader does not know
    ext = tmp_path / "ext.nir"
    ext.write_bytes(good.read_bytes())
    up_name = next(n.name for n in graph.of_type(Upsample))
    with h5py.File(ext, "r+") as f:
        meta = f[f"node/nodes/{up_name}/metadata"]
        del meta["sdm.extension"]
        meta.create_dataset("sdm.extension", data="bilinear_upsample", dtype=h5py.string_dtype())
    err = _one_line_error(["import-nir", str(ext)], capsys)
    assert "bilinear_upsample" in err and up_name in err
    # a plain NIR graph from another tool: no host side
    plain = tmp_path / "plain.nir"
    write_nir(lower_spiking_cnn(SpikingCNN(CNNConfig())), plain)
    assert "host-side" in _one_line_error(["import-nir", str(plain)], capsys)
    assert "no such file" in _one_line_error(["import-nir", str(tmp_path / "missing.nir")], capsys)


def test_export_cli_end_to_end(tmp_path):
    torch.manual_seed(0)
    ckpt = save_model(randomise(SpikingUNet(UNetConfig(**DEMO_LIKE))), tmp_path / "model.pt")
    exe = Path(sys.executable).parent / "export-nir"
    r = subprocess.run([str(exe), str(ckpt)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "model.nir").exists() and "extensions: upsample_nearest" in r.stdout
    exported = r.stdout
    r = subprocess.run([sys.executable, "-m", "sdm.cli", "import-nir", str(tmp_path / "model.nir"), "--compare",
                        str(ckpt), "--dtype", "float64"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert " 0 of " in r.stdout
    # both commands report the graph as it is in the file
    counts = re.compile(r"(\d+) nodes, (\d+) edges")
    assert counts.search(exported).groups() == counts.search(r.stdout).groups()


def test_compare_applies_the_files_threshold_scale(tmp_path, capsys):
    """A file exported with threshold guidance is compared against the checkpoint run at the same scale."""
    from sdm.cli import main

    torch.manual_seed(0)
    ckpt = save_model(randomise(SpikingUNet(UNetConfig(**DEMO_LIKE))), tmp_path / "model.pt")
    out = tmp_path / "guided.nir"
    assert main(["export-nir", str(ckpt), "-o", str(out), "--threshold-scale", "1.05", "--dtype", "float64"]) == 0
    assert main(["import-nir", str(out), "--compare", str(ckpt), "--dtype", "float64"]) == 0
    printed = capsys.readouterr().out
    assert " 0 of " in printed, printed
