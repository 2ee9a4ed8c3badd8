"""Bad input and faults, the file-content classes: corrupted checkpoints and NIR files through the CLI.

Every case writes a good file, corrupts one field and runs a command on it; the command must exit
with code 2 and print exactly one ``sdm <command>: error: ...`` line naming the field (no traceback),
and it must not create its output.  The files come from tiny models (8x8 grey images, ch 8, two
levels, T = 2) so the whole battery runs in seconds.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

from sdm.cli import main
from sdm.export.lower import lower_unet
from sdm.export.nir_format import to_nir, write_nir
from sdm.testing.weights import randomise
from sdm.train.checkpoint import load_checkpoint, save_checkpoint
from sdm.train.moments import Moments
from sdm.train.trainer import TrainConfig, train
from sdm.train.unet import SpikingUNet, UNetConfig

TINY = dict(img_ch=1, img_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=2)
# subtractive reset and v_init: the neurons are if_neuron extensions; TSM: temporal_affine ones
NIR_MODEL = dict(TINY, reset="subtract", v_init=0.5)


# ----- good files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real training run's checkpoint (optimizer, step, history, RNG, EMA): 2 of 2 steps done."""
    out = tmp_path_factory.mktemp("trained")
    train(out, UNetConfig(**TINY), TrainConfig(data="mnist-bundled", steps=2, batch_size=4, lr=1e-3, ema_decay=0.5,
                                               ema_bn_batches=1, seed=0, log_every=1),
          device="cpu", progress=False)
    return out / "model.pt"


@pytest.fixture(scope="module")
def good_nir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**NIR_MODEL)), tsm=True)
    return write_nir(lower_unet(model), tmp_path_factory.mktemp("nir") / "good.nir")


def _tsm_import() -> dict:
    """What ``sdm import-checkpoint --from sdm`` writes: a TSM-stage model without optimizer state."""
    torch.manual_seed(0)
    model = randomise(SpikingUNet(UNetConfig(**TINY)), tsm=True)
    return {"format": "sdm-checkpoint", "version": 1, "model_config": model.cfg.to_dict(),
            "diffusion": {"steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}, "stage": "tsm",
            "model": model.state_dict(), "ema": None, "step": 0, "imported_from": {"format": "sdm"}}


# ----- the one assertion of every case ---------------------------------------------------------
def refused(argv: list[str], out: Path, capsys, words: tuple[str, ...]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    msg = lines[0].split("\r")[-1]  # after any progress bar that \r-cleared itself
    assert msg.startswith(f"sdm {argv[0]}: error: "), msg
    for w in words:
        assert w in msg, f"{w!r} not in: {msg}"
    assert not out.exists(), f"{out} was created"
    assert not list(out.parent.glob(f".{out.name}*")), "a temporary output was left behind"
    return msg


def _run_checkpoint(command: str, ckpt: Path, tmp_path: Path, capsys, words) -> None:
    if command == "sample":
        out = tmp_path / "grid.png"
        argv = ["sample", str(ckpt), "-n", "1", "--steps", "1", "--out", str(out), "--device", "cpu"]
    elif command == "export":
        out = tmp_path / "out.nir"
        argv = ["export-nir", str(ckpt), "-o", str(out)]
    else:  # resume / resume-tsm
        out = tmp_path / "run"
        argv = ["train", "--resume", str(ckpt), "--steps", "3", "--out", str(out), "--device", "cpu"]
        argv += ["--tsm"] if command == "resume-tsm" else []
    before = ckpt.read_bytes()
    refused(argv, out, capsys, words)
    assert ckpt.read_bytes() == before  # the input is never touched


# ----- checkpoint cases: (id, command, corruption of the loaded dict, words of the message) -----
@dataclass
class CkptCase:
    id: str
    command: str  # sample | export | resume | resume-tsm
    corrupt: Callable[[dict], None]
    words: tuple[str, ...]


def _set(section: str, key: str, value):
    def corrupt(ckpt):
        ckpt[section][key] = value
    return corrupt


def _drop(*keys: str):
    def corrupt(ckpt):
        d = ckpt
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return corrupt


def _poison(section: str, name: str, value: float):
    def corrupt(ckpt):
        ckpt[section][name] = ckpt[section][name].clone()
        ckpt[section][name].view(-1)[0] = value
    return corrupt


def _moments(timesteps, gamma, **extra):
    def corrupt(ckpt):
        ckpt["moments"] = {"timesteps": torch.tensor(timesteps), "gamma": torch.tensor(gamma), "n": 4,
                           "data": "mnist-bundled", **extra}
    return corrupt


def _reshape_opt(ckpt):
    ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)


def _drop_opt_param(ckpt):
    ckpt["optimizer"]["param_groups"][0]["params"] = ckpt["optimizer"]["param_groups"][0]["params"][:-1]


def _everything(ckpt):
    ckpt["model"] = [1, 2, 3]


CKPT_CASES = [
    # model_config: types, unknown keys, values
    CkptCase("ch-string", "sample", _set("model_config", "ch", "16"), ("model_config", "ch must be an integer",
                                                                        "'16'")),
    CkptCase("ch_mult-string", "export", _set("model_config", "ch_mult", "1,2"), ("ch_mult", "list of integers")),
    CkptCase("T-bool", "sample", _set("model_config", "T", True), ("T must be an integer", "True")),
    CkptCase("tsm-int", "sample", _set("model_config", "tsm", 1), ("tsm must be true or false",)),
    CkptCase("theta-string", "sample", _set("model_config", "theta", "1.0"), ("theta must be a finite number",)),
    CkptCase("readout_decay-nan", "sample", _set("model_config", "readout_decay", float("nan")),
             ("readout_decay must be a finite number",)),
    CkptCase("model_config-unknown-key", "export", _set("model_config", "heads", 4),
             ("unknown UNet config fields", "heads")),
    CkptCase("thetas-count", "export", _set("model_config", "thetas", [1.0, 2.0]), ("thetas has 2 values",)),
    # diffusion section
    CkptCase("diffusion-steps-string", "sample", _set("diffusion", "steps", "x"), ("diffusion steps", "'x'")),
    CkptCase("diffusion-unknown-key", "sample", _set("diffusion", "beta_max", 0.02),
             ("unknown diffusion config fields", "beta_max")),
    CkptCase("diffusion-beta-nan", "export", _set("diffusion", "beta_start", float("nan")), ("beta_start",)),
    CkptCase("diffusion-longer-than-table", "sample", _set("diffusion", "steps", 2000),
             ("diffusion steps=2000", "diffusion_steps=1000")),
    # weights against the configuration
    CkptCase("ch-mismatch", "export", _set("model_config", "ch", 16),
             ("model weight 'time_embedding.table'", "[1000, 8]", "[1000, 16]")),
    CkptCase("num_res_blocks-mismatch", "sample", _set("model_config", "num_res_blocks", 2),
             ("model weight 'down.1.conv.weight'", "no such tensor")),
    CkptCase("tsm-without-gains", "export", _set("model_config", "tsm", True), ("lack", "tsm_gain")),
    CkptCase("ema-shape", "sample", _set("ema", "stem.conv.weight", torch.zeros(8, 8, 1, 1)),
             ("ema weight 'stem.conv.weight'", "[8, 8, 1, 1]", "[8, 8, 3, 3]")),
    CkptCase("weight-not-tensor", "export", _set("model", "stem.conv.bias", [0.0] * 8),
             ("model weight 'stem.conv.bias' is not a tensor",)),
    CkptCase("model-section-list", "sample", _everything, ("'model' must be a state dict",)),
    # NaN / Inf
    CkptCase("nan-model-weight", "sample", _poison("model", "down.0.conv1.weight", float("nan")),
             ("model weight 'down.0.conv1.weight' has NaN",)),
    CkptCase("inf-ema-weight", "export", _poison("ema", "stem.conv.weight", float("inf")),
             ("ema weight 'stem.conv.weight' has Inf",)),
    CkptCase("nan-running-var", "sample", _poison("model", "down.0.bn1.running_var", float("nan")),
             ("model weight 'down.0.bn1.running_var' has NaN",)),
    # other fields every load checks
    CkptCase("unknown-stage", "sample", lambda c: c.__setitem__("stage", "distilled"),
             ("unknown stage 'distilled'", "base, tsm, converted")),
    CkptCase("version-string", "sample", lambda c: c.__setitem__("version", "1"), ("version must be an integer",)),
    CkptCase("step-negative", "export", lambda c: c.__setitem__("step", -1), ("step must be a non-negative",)),
    CkptCase("moments-nan", "sample", _moments([0, 500, 999], [1.0, float("nan"), 0.5]), ("moments", "gamma")),
    CkptCase("moments-outside-schedule", "export", _moments([0, 500, 5000], [1.0, 1.0, 1.0]),
             ("moments", "timestep 5000")),
    CkptCase("moments-length", "sample", _moments([0, 999], [1.0, 1.0, 1.0]), ("moments", "2 timesteps", "3 values")),
    CkptCase("moments-unknown-field", "sample", _moments([0, 999], [1.0, 1.0], sigma=1.0),
             ("moments", "unknown fields", "sigma")),
    CkptCase("moments-not-a-record", "export", lambda c: c.__setitem__("moments", [1, 2]), ("moments",)),
    # train --resume: what continuing reads
    CkptCase("resume-no-optimizer", "resume", _drop("optimizer"), ("no optimizer state", "--tsm", "fresh")),
    CkptCase("resume-no-step", "resume", _drop("step"), ("has no step",)),
    CkptCase("resume-rng-size", "resume", lambda c: c.__setitem__("rng", {"torch": torch.zeros(10, dtype=torch.uint8)}),
             ("rng torch", "[10]")),
    CkptCase("resume-rng-not-a-mapping", "resume", lambda c: c.__setitem__("rng", "seed=3"), ("rng must be",)),
    CkptCase("resume-history", "resume", lambda c: c.__setitem__("history", [[1, "low"]]), ("history",)),
    CkptCase("resume-optimizer-param-count", "resume", _drop_opt_param, ("optimizer state covers",)),
    CkptCase("resume-optimizer-shape", "resume", _reshape_opt, ("optimizer state 'exp_avg' of parameter 0", "[3]")),
    CkptCase("resume-ckpt_every-0", "resume", _set("train_config", "ckpt_every", 0),
             ("train_config", "ckpt_every=0 must be >= 1")),
    CkptCase("resume-log_every-0", "resume", _set("train_config", "log_every", 0), ("log_every=0",)),
    CkptCase("resume-lr-string", "resume", _set("train_config", "lr", "fast"), ("lr must be a finite number",)),
    CkptCase("resume-batch_size-bool", "resume", _set("train_config", "batch_size", True),
             ("batch_size must be an integer",)),
    CkptCase("resume-ema_decay-1", "resume", _set("train_config", "ema_decay", 1.0), ("ema_decay=1.0",)),
    CkptCase("resume-train_config-unknown-key", "resume", _set("train_config", "epochs", 3),
             ("unknown training config fields", "epochs")),
    CkptCase("resume-unknown-stage", "resume", lambda c: c.__setitem__("stage", "finetune"),
             ("unknown stage 'finetune'",)),
    CkptCase("resume-ch-mismatch", "resume", _set("model_config", "ch", 16), ("time_embedding.table", "[1000, 8]")),
    CkptCase("resume-nan-weight", "resume", _poison("model", "up.0.conv2.weight", float("nan")),
             ("model weight 'up.0.conv2.weight' has NaN",)),
]


@pytest.mark.parametrize("case", CKPT_CASES, ids=[c.id for c in CKPT_CASES])
def test_corrupted_checkpoint(case: CkptCase, trained, tmp_path, capsys):
    ckpt = copy.deepcopy(torch.load(trained, weights_only=True))
    case.corrupt(ckpt)
    path = tmp_path / "model.pt"
    torch.save(ckpt, path)
    _run_checkpoint(case.command, path, tmp_path, capsys, (str(path), *case.words))


def test_imported_tsm_checkpoint_does_not_resume(tmp_path, capsys):
    """A reference import (TSM stage, no optimizer) resumed with --tsm: the file has nothing to resume."""
    path = tmp_path / "imported.pt"
    torch.save(_tsm_import(), path)
    _run_checkpoint("resume-tsm", path, tmp_path, capsys, (str(path), "no optimizer state", "tsm stage"))


def test_imported_base_checkpoint_does_not_resume(trained, tmp_path, capsys):
    ckpt = load_checkpoint(trained)
    payload = {k: ckpt[k] for k in ("model_config", "diffusion", "model", "ema")}
    path = save_checkpoint(tmp_path / "imported.pt", {**payload, "stage": "base", "step": 0,
                                                      "imported_from": {"format": "sddpm"}})
    _run_checkpoint("resume", path, tmp_path, capsys, (str(path), "no optimizer state", "--tsm"))


def test_export_refuses_a_non_finite_threshold_scale(trained, tmp_path, capsys):
    out = tmp_path / "out.nir"
    refused(["export-nir", str(trained), "-o", str(out), "--threshold-scale", "inf"], out, capsys,
            ("threshold", "inf"))


def test_good_files_pass_the_same_commands(trained, good_nir, tmp_path, capsys):
    """The controls: uncorrupted files go through every command the battery uses."""
    assert main(["sample", str(trained), "-n", "1", "--steps", "1", "--out", str(tmp_path / "g.png"),
                 "--device", "cpu"]) == 0
    assert main(["export-nir", str(trained), "-o", str(tmp_path / "m.nir")]) == 0
    assert main(["import-nir", str(good_nir), "--sample", str(tmp_path / "n.png"), "-n", "1", "--steps", "1"]) == 0
    shutil.copyfile(trained, tmp_path / "model.pt")
    assert main(["train", "--resume", str(tmp_path / "model.pt"), "--steps", "3", "--out", str(tmp_path / "run"),
                 "--device", "cpu"]) == 0
    assert load_checkpoint(tmp_path / "run" / "model.pt")["step"] == 3
    ckpt = load_checkpoint(trained)
    ckpt["moments"] = Moments(np.array([0, 500, 999]), np.array([1.0, 0.8, 0.5]), 4, "mnist-bundled").to_dict()
    torch.save(ckpt, tmp_path / "moments.pt")
    assert main(["sample", str(tmp_path / "moments.pt"), "-n", "1", "--steps", "2", "--sampler", "analytic-ddim",
                 "--out", str(tmp_path / "a.png"), "--device", "cpu"]) == 0
    assert all((tmp_path / f).exists() for f in ("g.png", "m.nir", "n.png", "a.png"))
    capsys.readouterr()


# ----- NIR cases: (id, corruption of the written HDF5 file, words of the message) ------------------
H = "node/metadata/host/"
N = "node/nodes/"


def _put(key: str, value, string: bool = False):
    def corrupt(f):
        if key in f:
            del f[key]
        f.create_dataset(key, data=value, **({"dtype": h5py.string_dtype()} if string else {}))
    return corrupt


def _delete(key: str):
    def corrupt(f):
        del f[key]
    return corrupt


def _poke(key: str, value: float):
    def corrupt(f):
        data = f[key][()]
        data.reshape(-1)[0] = value
        del f[key]
        f.create_dataset(key, data=data)
    return corrupt


def _both(*corruptions):
    def corrupt(f):
        for c in corruptions:
            c(f)
    return corrupt


def _moments_group(f):
    g = f.create_group(H + "moments")
    g.create_dataset("timesteps", data=np.array([0, 500, 4000]))
    g.create_dataset("gamma", data=np.array([1.0, 0.9, 0.5]))
    g.create_dataset("n", data=4)
    g.create_dataset("data", data="mnist-bundled", dtype=h5py.string_dtype())


NIR_CASES = [
    ("host-T-0", _put(H + "T", 0), ("host", "T must be an integer >= 1", "got 0")),
    ("host-T-fraction", _put(H + "T", 2.5), ("host T must be an integer", "2.5")),
    ("host-T-string", _put(H + "T", "two", string=True), ("host T must be an integer", "'two'")),
    ("threshold_scale-nan", _put(H + "threshold_scale", np.nan), ("threshold_scale must be a positive finite",)),
    ("threshold_scale-inf", _put(H + "threshold_scale", np.inf), ("threshold_scale", "inf")),
    ("readout_decay-nan", _put(H + "readout_decay", np.nan), ("readout_decay must be a finite number",)),
    ("theta-negative", _put(H + "theta", -1.0), ("theta must be a positive",)),
    ("unknown-readout", _put(H + "readout", "max", string=True), ("readout must be one of", "'max'")),
    ("short-temb-table", lambda f: _put(H + "time_mlp/table", f[H + "time_mlp/table"][:10])(f),
     ("time_mlp table has 10 rows", "1000 steps")),
    ("no-format-version", _delete("node/metadata/sdm.format_version"), ("missing sdm.format_version",)),
    ("format-version-string", _put("node/metadata/sdm.format_version", "one", string=True),
     ("sdm.format_version must be an integer",)),
    ("format-version-newer", _put("node/metadata/sdm.format_version", 9), ("format version 9 is newer",)),
    ("temporal_affine-no-gain", _delete(N + "stem.conv_in.tsm/metadata/gain"),
     ("node 'stem.conv_in.tsm'", "temporal_affine extension is missing 'gain'")),
    ("upsample-no-scale", _delete(N + "up.2.upsample/metadata/scale"),
     ("node 'up.2.upsample'", "upsample_nearest extension is missing 'scale'")),
    ("upsample-scale-string", _put(N + "up.2.upsample/metadata/scale", "2x", string=True),
     ("node 'up.2.upsample'", "scale must be an integer")),
    ("if_neuron-no-reset", _delete(N + "stem.neuron/metadata/reset"),
     ("node 'stem.neuron'", "if_neuron extension is missing 'reset'")),
    ("if_neuron-no-v_threshold", _delete(N + "down.0.neuron2/metadata/v_threshold"),
     ("node 'down.0.neuron2'", "missing 'v_threshold'")),
    ("if_neuron-decay-nan", _put(N + "stem.neuron/metadata/decay", np.nan), ("node 'stem.neuron'", "decay")),
    ("tail-no-out_w", _delete(H + "tail/out_w"), ("host tail", "missing arrays ['out_w']")),
    ("tail-conv_w-input-channels", _put(H + "tail/conv_w", np.zeros((1, 4, 3, 3), np.float32)),
     ("host tail", "conv_w has shape [1, 4, 3, 3]")),
    ("tail-conv_w-vs-image-channels", _put(H + "img_shape", np.array([3, 8, 8])),
     ("host: tail conv_w", "image's 3 channel(s)")),
    ("tail-conv_w-vs-graph-output", _both(_put(H + "tail/conv_w", np.zeros((1, 4, 3, 3), np.float32)),
                                          _put(H + "tail/bn_scale", np.ones(4, np.float32)),
                                          _put(H + "tail/bn_shift", np.zeros(4, np.float32))),
     ("tail conv_w reads 4 channels", "graph output 'output' has 8")),
    ("tail-conv_gain-length", _put(H + "tail/conv_gain", np.ones(5, np.float32)), ("tail conv_gain has 5 steps",)),
    ("temb-w-vs-time-mlp", _put(H + "temb_proj/down.0/w", np.zeros((8, 16), np.float32)),
     ("temb_proj down.0 w has shape [8, 16]", "32 outputs")),
    ("temb-w-vs-block-channels", _both(_put(H + "temb_proj/down.0/w", np.zeros((4, 32), np.float32)),
                                       _put(H + "temb_proj/down.0/b", np.zeros(4, np.float32))),
     ("temb_proj down.0 w has shape [4, 32]", "8 channels of input 'down.0.temb'")),
    ("temb-block-missing", _delete(H + "temb_proj/down.0"), ("'down.0.temb'", "block 'down.0'")),
    ("time_mlp-fc1_w-shape", _put(H + "time_mlp/fc1_w", np.zeros((32, 4), np.float32)),
     ("host time_mlp", "fc1_w has shape [32, 4]")),
    ("stride-string", _put(N + "down.1.conv/stride", "two", string=True),
     ("node 'down.1.conv'", "stride must hold integers", "'two'")),
    ("padding-string", _put(N + "stem.conv_in/padding", "same", string=True),
     ("node 'stem.conv_in'", "padding must hold integers")),
    ("weight-string", _put(N + "stem.conv/weight", "w", string=True), ("node 'stem.conv'", "weight must hold numbers")),
    ("nan-conv-weight", _poke(N + "down.0.conv1/weight", np.nan), ("node 'down.0.conv1'", "weight has NaN")),
    ("inf-conv-bias", _poke(N + "stem.conv/bias", np.inf), ("node 'stem.conv'", "bias has Inf")),
    ("inf-threshold", _poke(N + "stem.neuron/metadata/v_threshold", np.inf),
     ("node 'stem.neuron'", "threshold has Inf")),
    ("nan-tsm-gain", _poke(N + "stem.conv_in.tsm/metadata/gain", np.nan), ("node 'stem.conv_in.tsm'", "gain has NaN")),
    ("tsm-gain-length", _put(N + "stem.conv_in.tsm/metadata/gain", np.ones(3, np.float32)),
     ("stem.conv_in.tsm", "gain has 3 steps", "T is 2")),
    ("nan-temb-table", _poke(H + "time_mlp/table", np.nan), ("host time_mlp", "table has NaN")),
    ("nan-tail-bn", _poke(H + "tail/out_bn_scale", np.nan), ("host tail", "out_bn_scale has NaN")),
    ("inf-temb-bias", _poke(H + "temb_proj/up.1/b", np.inf), ("host temb_proj up.1", "b has Inf")),
    ("schedule-steps-string", _put(H + "schedule/steps", "many", string=True), ("host schedule steps",)),
    ("schedule-beta-nan", _put(H + "schedule/beta_end", np.nan), ("host schedule", "beta_end")),
    ("no-host-theta", _delete(H + "theta"), ("host is missing 'theta'",)),
    ("moments-outside-schedule", _moments_group, ("moments", "timestep 4000")),
]


@pytest.mark.parametrize("case", NIR_CASES, ids=[c[0] for c in NIR_CASES])
def test_corrupted_nir_file(case, good_nir, tmp_path, capsys):
    _, corrupt, words = case
    path = tmp_path / "model.nir"
    shutil.copyfile(good_nir, path)
    with h5py.File(path, "r+") as f:
        corrupt(f)
    out = tmp_path / "grid.png"
    refused(["import-nir", str(path), "--sample", str(out), "-n", "1", "--steps", "1"], out, capsys,
            (str(path), *words))


# edits of the nir.NIRGraph before nir.write (another writer's mistakes)
def _graph_without(node: str, key: str):
    def edit(ng):
        del ng.nodes[node].metadata[key]
    return edit


def _host_without(*keys: str):
    def edit(ng):
        d = ng.metadata["host"]
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return edit


GRAPH_CASES = [
    ("graph-if_neuron-no-v_init", _graph_without("up.0.neuron2", "v_init"), ("node 'up.0.neuron2'", "'v_init'")),
    ("graph-no-tail-group", _host_without("tail"), ("host is missing 'tail'",)),
    ("graph-no-tail-conv_b", _host_without("tail", "conv_b"), ("host tail", "missing arrays ['conv_b']")),
    ("graph-no-schedule-steps", _host_without("schedule", "steps"), ("host schedule is missing 'steps'",)),
]


@pytest.mark.parametrize("case", GRAPH_CASES, ids=[c[0] for c in GRAPH_CASES])
def test_corrupted_nir_graph(case, tmp_path, capsys):
    import nir

    _, edit, words = case
    torch.manual_seed(0)
    ng = to_nir(lower_unet(randomise(SpikingUNet(UNetConfig(**NIR_MODEL)), tsm=True)))
    edit(ng)
    path = tmp_path / "other.nir"
    nir.write(path, ng)
    out = tmp_path / "grid.png"
    refused(["import-nir", str(path), "--sample", str(out), "-n", "1", "--steps", "1"], out, capsys,
            (str(path), *words))


def test_the_battery_is_large():
    assert len(CKPT_CASES) + len(NIR_CASES) + len(GRAPH_CASES) + 3 >= 35
