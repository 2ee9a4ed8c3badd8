"""Checkpoint files: round trip of what train() writes, refusal of unsafe or broken files
with one-line messages naming the file, and atomic writes."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
import torch
from helpers import assert_same

from sdm.files import atomic_write
from sdm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sdm.train.trainer import TrainConfig
from sdm.train.unet import SpikingUNet, UNetConfig

pytestmark = pytest.mark.usefixtures("torch_threads")


def refused(path, match=None) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg and "\r" not in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


# ----- round trip -----------------------------------------------------------------------
def test_checkpoint_written_by_train_round_trips(trained_ckpt, tiny_model_cfg, tmp_path):
    ckpt = load_checkpoint(trained_ckpt)
    assert ckpt["format"] == "sdm-checkpoint" and ckpt["version"] == 1
    assert ckpt["stage"] == "base" and ckpt["step"] == 8
    assert UNetConfig.from_dict(ckpt["model_config"]) == tiny_model_cfg
    tc = TrainConfig.from_dict(ckpt["train_config"])
    assert (tc.steps, tc.batch_size, tc.lr, tc.ema_decay, tc.seed) == (8, 8, 2e-3, 0.5, 3)
    assert ckpt["data"] == {"spec": "mnist-bundled", "channels": 1, "image_size": 16}
    assert [h[0] for h in ckpt["history"]] == [2, 4, 6, 8]
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and ckpt["rng"]["torch"].dtype == torch.uint8

    # the weights load strictly into the architecture the config describes, and are trained
    model = SpikingUNet(UNetConfig.from_dict(ckpt["model_config"]))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ckpt["model"])
    assert_same(model.state_dict(), ckpt["model"], "ckpt")
    assert not torch.equal(fresh["stem.conv_in.weight"], ckpt["model"]["stem.conv_in.weight"])
    ema = SpikingUNet(UNetConfig.from_dict(ckpt["model_config"]))
    ema.load_state_dict(ckpt["ema"])
    assert not torch.equal(ckpt["ema"]["stem.conv.weight"], ckpt["model"]["stem.conv.weight"])

    # Adam state for every trainable parameter, at the right step
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = ckpt["optimizer"]
    assert len(opt["state"]) == len(trainable) == len(opt["param_groups"][0]["params"])
    for i, p in enumerate(trainable):
        s = opt["state"][i]
        assert s["exp_avg"].shape == p.shape and s["exp_avg_sq"].shape == p.shape
        assert float(s["step"]) == 8
    torch.optim.Adam(trainable, lr=1e-3).load_state_dict(opt)

    # save -> load gives back exactly the same dict
    again = tmp_path / "again.pt"
    save_checkpoint(again, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    assert_same(ckpt, load_checkpoint(again), "ckpt")


def test_save_checkpoint_round_trip_of_plain_data(tmp_path):
    payload = {"model_config": {"ch": 8, "ch_mult": [1, 2]}, "model": {"w": torch.arange(6.0).view(2, 3)},
               "history": [[1, 0.5], [2, 0.25]], "note": "x", "none": None, "nested": {"t": torch.tensor([1, 2])}}
    path = save_checkpoint(tmp_path / "sub" / "model.pt", payload)
    assert path == tmp_path / "sub" / "model.pt"
    out = load_checkpoint(path)
    assert_same({"format": "sdm-checkpoint", "version": 1, **payload}, out, "ckpt")
    assert os.listdir(tmp_path / "sub") == ["model.pt"]


def test_checkpoint_gets_normal_file_permissions(tmp_path):
    # mkstemp creates 0600 files; the renamed checkpoint must follow the umask like any other file
    mask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "model.pt", {"model_config": {}, "model": {}})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ----- refusing bad files ---------------------------------------------------------------
class _ShellPayload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch '{self.sentinel}'",)


class _ExecPayload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return exec, (f"open({str(self.sentinel)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("payload_cls", [_ShellPayload, _ExecPayload])
@pytest.mark.parametrize("disguised", [False, True], ids=["bare", "inside-checkpoint-dict"])
def test_malicious_pickle_is_refused_not_executed(tmp_path, payload_cls, disguised):
    sentinel = tmp_path / "SENTINEL"
    evil = payload_cls(sentinel)
    obj = {"format": "sdm-checkpoint", "version": 1, "model_config": {}, "model": {"w": evil}} if disguised else evil
    path = tmp_path / "model.pt"
    torch.save(obj, path)

    msg = refused(path, "unsafe")
    assert not sentinel.exists(), "loading the checkpoint ran the pickle's code"
    assert "refused" in msg and "GLOBAL" in msg  # names what it would have imported

    # control: the payload is live, so the refusal above is what kept it from running
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_truncated_checkpoint(trained_ckpt, tmp_path):
    data = trained_ckpt.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    refused(path, "corrupt or truncated")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    assert "unsafe" not in refused(path, "not a checkpoint")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    refused(path, "not a checkpoint")


def test_json_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text(json.dumps({"format": "sdm-checkpoint", "model": {}}, indent=2))
    assert "unsafe" not in refused(path, "not a checkpoint")


def test_garbage_after_a_pickle_header(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02garbage")
    assert "unsafe" not in refused(path, "not a checkpoint")


def test_plain_pickle_of_safe_data_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pt"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    refused(path)


@pytest.mark.parametrize("obj,kind", [(torch.zeros(3), "Tensor"), ({"model": {}}, "dict without format tag"),
                                      ([1, 2], "list")])
def test_wrong_type_is_not_an_sdm_checkpoint(tmp_path, obj, kind):
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    msg = refused(path, "not an sdm checkpoint")
    assert kind in msg


def test_missing_keys_and_newer_version(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": "sdm-checkpoint", "version": 1, "model_config": {}}, path)
    refused(path, "missing model")
    torch.save({"format": "sdm-checkpoint", "version": 99, "model_config": {}, "model": {}}, path)
    refused(path, "newer")


def test_directory_and_missing_file(tmp_path):
    refused(tmp_path, "is a directory")
    refused(tmp_path / "nope" / "model.pt", "no such file")


# ----- atomic writes --------------------------------------------------------------------
class _Boom(Exception):
    pass


def _half_write_then_fail(exc):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"PARTIAL" * 100)
        raise exc
    return write


@pytest.mark.parametrize("exc", [_Boom("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, exc):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model_config": {"a": 1}, "model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    with pytest.raises(type(exc)):
        atomic_write(path, _half_write_then_fail(exc))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]
    assert load_checkpoint(path)["model_config"] == {"a": 1}


def test_save_checkpoint_failing_midway_keeps_previous(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model_config": {"a": 1}, "model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    # torch.save writes the first tensor, then fails to pickle the lambda
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # lambdas do not pickle
        save_checkpoint(path, {"model_config": {}, "model": {"w": torch.zeros(1000)}, "bad": lambda: 0})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(_Boom):
        atomic_write(tmp_path / "out" / "model.pt", _half_write_then_fail(_Boom()))
    assert os.listdir(tmp_path / "out") == []
