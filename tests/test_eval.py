"""Evaluation: the Fréchet distance, the offline classifier metric, the Inception path and `sdm eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdm.cli import main
from sdm.train.checkpoint import CheckpointError, save_checkpoint
from sdm.train.fid import cached_statistics, feature_statistics, fid_from_features, frechet_distance

pytestmark = pytest.mark.usefixtures("torch_threads")

IMG = 16  # the tiny model's image size (tests/conftest.py)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("SDM_DEBUG", raising=False)
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "cache"))


def fails(capsys, argv, *needles) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sdm {argv[0]}: error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, err)
    return lines[0]


# ----- the Fréchet distance ---------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    # fewer samples than dimensions: singular covariances still give ~0
    g = np.random.default_rng(1).normal(size=(10, 32))
    assert fid_from_features(g, g) == pytest.approx(0.0, abs=1e-4)


def test_fid_grows_with_the_shift_and_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    values = [fid_from_features(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] < 0.05
    assert all(v2 > v1 for v1, v2 in zip(values, values[1:])), values
    # a mean shift by s in each of d dimensions adds d * s^2; a covariance scale c^2 I adds d (c - 1)^2
    d = 8
    assert frechet_distance(np.zeros(d), np.eye(d), np.full(d, 2.0), np.eye(d)) == pytest.approx(d * 4.0)
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), 9 * np.eye(d)) == pytest.approx(d * 4.0)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_cache(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return feature_statistics(np.arange(12.0).reshape(6, 2))

    mu, sigma, path, hit = cached_statistics({"data": "x", "n": 6}, compute, kind="t")
    assert not hit and path.exists() and path.parent.parent == tmp_path / "cache"
    mu2, sigma2, path2, hit2 = cached_statistics({"data": "x", "n": 6}, compute, kind="t")
    assert hit2 and path2 == path and len(calls) == 1
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert cached_statistics({"data": "y", "n": 6}, compute, kind="t")[2] != path
    path.write_bytes(b"damaged")  # a damaged cache file is recomputed, not an error
    assert not cached_statistics({"data": "x", "n": 6}, compute, kind="t")[3]


# ----- the classifier ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist16():
    from sdm.train.data import load_dataset

    return load_dataset("mnist-bundled", image_size=IMG)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory, mnist16):
    """A classifier for 16x16 mnist-bundled, trained briefly (a few seconds), with reference statistics."""
    from sdm.train.classifier import reference_statistics, save_classifier, train_classifier

    model, info = train_classifier(mnist16, "mnist-bundled", steps=250, batch_size=32, width=16, seed=0,
                                   progress=False)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    save_classifier(path, model, "mnist-bundled", info, reference_statistics(model, mnist16))
    return path, info


def test_classifier_reaches_high_held_out_accuracy(classifier_file):
    _, info = classifier_file
    assert info["n_test"] == 500 and info["n_train"] == 4500
    assert info["test_accuracy"] > 0.9, info


def test_classifier_round_trip_and_metrics(classifier_file, mnist16):
    from sdm.train.classifier import classifier_features, classifier_scores, load_classifier

    path, info = classifier_file
    model, ckpt = load_classifier(path)
    assert ckpt["data"] == {"spec": "mnist-bundled", "channels": 1, "image_size": IMG, "num_classes": 10}
    assert ckpt["test_accuracy"] == pytest.approx(info["test_accuracy"])
    ref = ckpt["reference"]
    assert ref["n"] == len(mnist16) and ref["mu"].shape == (128,) and ref["sigma"].shape == (128, 128)
    # the loaded network reproduces the stored reference statistics exactly
    mu, sigma = feature_statistics(classifier_features(model, mnist16))
    np.testing.assert_allclose(mu, ref["mu"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, ref["sigma"].numpy(), rtol=1e-4, atol=1e-6)
    # FID of the data set with itself ~ 0; real digits are confidently classified, noise is not
    real = mnist16.images_uint8[:400].float() / 127.5 - 1
    assert fid_from_features(classifier_features(model, real), classifier_features(model, real)) < 1e-6
    noise = torch.rand(400, 1, IMG, IMG) * 2 - 1
    fids = [frechet_distance(*feature_statistics(classifier_features(model, (real + s).clamp(-1, 1))),
                             ref["mu"].numpy(), ref["sigma"].numpy()) for s in (0.0, 0.3, 0.8)]
    assert fids[0] < fids[1] < fids[2], fids
    assert frechet_distance(*feature_statistics(classifier_features(model, noise)),
                            ref["mu"].numpy(), ref["sigma"].numpy()) > fids[0]
    s_real, s_noise = classifier_scores(model, real), classifier_scores(model, noise)
    assert s_real["confidence"] > 0.8 and s_real["confidence"] > s_noise["confidence"]
    assert sum(s_real["class_histogram"]) == pytest.approx(1.0)
    assert 0 <= s_noise["class_entropy"] <= np.log(10) + 1e-9


def test_load_classifier_refuses_other_files(tmp_path, trained_ckpt):
    from sdm.train.classifier import load_classifier

    with pytest.raises(CheckpointError, match="not a classifier checkpoint"):
        load_classifier(trained_ckpt)
    bad = tmp_path / "c.pt"
    save_checkpoint(bad, {"kind": "classifier", "model_config": {"img_ch": 1}, "model": {}})
    with pytest.raises(CheckpointError, match="damaged classifier checkpoint"):
        load_classifier(bad)


def test_classifier_config_is_strict(tmp_path, classifier_file, mnist16):
    from sdm.errors import ConfigError
    from sdm.train.checkpoint import load_checkpoint
    from sdm.train.classifier import ClassifierConfig, load_classifier, train_classifier

    with pytest.raises(ConfigError, match=r"unknown classifier config fields: \['depth'\]"):
        ClassifierConfig.from_dict({"img_ch": 1, "depth": 3})
    assert ClassifierConfig.from_dict({"width": 8}) == ClassifierConfig(width=8)
    # in a file, the unknown field is named in the one-line error
    ckpt = load_checkpoint(classifier_file[0])
    ckpt["model_config"]["depth"] = 3
    save_checkpoint(tmp_path / "c.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"damaged classifier checkpoint \(unknown classifier config fields"):
        load_classifier(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="--steps must be >= 1"):
        train_classifier(mnist16, "mnist-bundled", steps=0, progress=False)


def test_train_classifier_needs_labels(capsys, tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    fails(capsys, ["train-classifier", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "c.pt"),
                   "--steps", "1", "--img-size", "8", "--threads", "1"], "no class labels")
    assert not (tmp_path / "c.pt").exists()


def test_train_classifier_cli(capsys, tmp_path):
    out = tmp_path / "c.pt"
    assert main(["train-classifier", "--data", "mnist-bundled", "--img-size", "8", "--steps", "3",
                 "--batch-size", "8", "--out", str(out), "--threads", "1"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    from sdm.train.classifier import load_classifier

    _, ckpt = load_classifier(out)
    assert ckpt["data"]["image_size"] == 8 and 0 <= ckpt["test_accuracy"] <= 1


# ----- Inception (random weights of the right shape) ---------------------------------------
@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    from sdm.train.inception import random_inception_weights

    return random_inception_weights(tmp_path_factory.mktemp("inc") / "inception.pth", seed=0)


def test_inception_path_with_random_weights(random_inception):
    from sdm.train.inception import inception_features, inception_score, load_inception

    net = load_inception(random_inception)
    x = torch.rand(6, 1, IMG, IMG) * 2 - 1
    pool, logits = inception_features(net, x, progress=False)
    assert pool.shape == (6, 2048) and logits.shape == (6, 1008)
    fid = fid_from_features(pool[:3], pool[3:])  # 2048-d: a few seconds on one thread
    mean, std = inception_score(logits)
    assert np.isfinite(fid) and np.isfinite(mean) and np.isfinite(std) and mean >= 1.0


def test_inception_refuses_wrong_weights(tmp_path, random_inception):
    from sdm.train.inception import InceptionWeightsError, load_inception

    sd = torch.load(random_inception, weights_only=True)
    sd.pop("fc.bias")
    sd["Mixed_7c.branch1x1.conv.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(InceptionWeightsError) as info:
        load_inception(bad)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "fc.bias" in msg and "Mixed_7c" in msg


# ----- sdm eval ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_ckpt, classifier_file):
    """The conftest's tiny trained model (16x16, mnist-bundled) with the classifier beside it."""
    import shutil

    d = tmp_path_factory.mktemp("evalmodel")
    shutil.copy(trained_ckpt, d / "model.pt")
    shutil.copy(classifier_file[0], d / "classifier.pt")
    return d


def test_eval_end_to_end_writes_json(capsys, tmp_path, model_dir, random_inception):
    out = tmp_path / "r.json"
    argv = ["eval", str(model_dir / "model.pt"), "--n", "6", "--steps", "2", "--seed", "1", "--batch-size", "3",
            "--threshold-scale", "0.997", "--inception-weights", str(random_inception), "--ref-n", "8",
            "--json", str(out), "--threads", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for row in ("classifier FID (offline)", "classifier confidence", "Inception FID", "Inception Score"):
        assert row in text, text
    r = json.loads(out.read_text())
    s, m = r["settings"], r["metrics"]
    assert s == {**s, "model": str(model_dir / "model.pt"), "sampler": "ddim", "steps": 2, "n": 6, "seed": 1,
                 "threshold_scale": 0.997, "weights": "ema", "data": "mnist-bundled"}
    for k in ("classifier_fid", "classifier_confidence", "class_entropy", "inception_fid", "inception_score"):
        assert np.isfinite(m[k]), (k, m)
    assert m["classifier_fid"] > 0 and len(m["class_histogram"]) == 10
    assert r["classifier"]["test_accuracy"] > 0.9 and not r["inception"]["reference_cached"]
    # the second run reads the cached Inception reference statistics and reproduces every number
    assert main(argv) == 0
    r2 = json.loads(out.read_text())
    assert r2["inception"]["reference_cached"] and r2["metrics"] == m


def test_eval_errors(capsys, tmp_path, model_dir, trained_ckpt, random_inception):
    from sdm.train.classifier import load_classifier

    model = str(model_dir / "model.pt")
    # no classifier beside the model: say so and give the command, do not train one
    line = fails(capsys, ["eval", str(trained_ckpt), "--n", "2"], "classifier.pt", "sdm train-classifier",
                 "--img-size 16")
    assert "--data mnist-bundled" in line
    # classifier for another data set / image size / not a classifier at all
    _, ckpt = load_classifier(model_dir / "classifier.pt")
    other = tmp_path / "other.pt"
    save_checkpoint(other, {**{k: v for k, v in ckpt.items() if k not in ("format", "version")},
                            "data": {**ckpt["data"], "spec": "fashion-mnist:/somewhere"}})
    fails(capsys, ["eval", model, "--n", "2", "--classifier", str(other)], str(other), "fashion-mnist")
    small = tmp_path / "small.pt"
    assert main(["train-classifier", "--img-size", "8", "--steps", "1", "--out", str(small), "--threads", "1"]) == 0
    capsys.readouterr()
    fails(capsys, ["eval", model, "--n", "2", "--classifier", str(small)], str(small), "1x8x8")
    fails(capsys, ["eval", model, "--n", "2", "--classifier", model], "not a classifier checkpoint")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    fails(capsys, ["eval", model, "--n", "2", "--classifier", str(corrupt)], str(corrupt))
    fails(capsys, ["eval", str(corrupt), "--n", "2"], str(corrupt))
    fails(capsys, ["eval", str(tmp_path / "missing.pt"), "--n", "2"], "no such file")
    fails(capsys, ["eval", str(model_dir / "classifier.pt"), "--n", "2"], "does not match the spiking UNet")
    fails(capsys, ["eval", model, "--n", "2", "--data", "folder:" + str(tmp_path)], "no class labels")
    # wrong Inception weights: one line naming the file, before any sampling
    sd = torch.load(random_inception, weights_only=True)
    sd["fc.weight"] = torch.zeros(10, 2048)
    bad = tmp_path / "bad_inception.pth"
    torch.save(sd, bad)
    fails(capsys, ["eval", model, "--n", "2", "--inception-weights", str(bad)], str(bad), "fc.weight")
    fails(capsys, ["eval", model, "--n", "2", "--inception-weights", str(model_dir / "classifier.pt")],
          "not InceptionV3 weights")
    fails(capsys, ["eval", model, "--n", "2", "--inception-weights", str(tmp_path / "none.pth")], "no such file")


# ----- sdm eval on a Spiking-Diffusion (absorbing) model -----------------------------------------
@pytest.fixture(scope="module")
def absorbing_dir(tmp_path_factory):
    """A tiny VQ-SVAE + SDID pair (28 px, a few steps) with a 28-px classifier beside it."""
    from sdm.train.classifier import reference_statistics, save_classifier, train_classifier
    from sdm.train.data import load_dataset
    from sdm.train.sd_trainer import SDTrainConfig, train_absorbing, train_vqsvae
    from sdm.train.sdid import SDIDConfig
    from sdm.train.vqsvae import VQSVAEConfig

    d = tmp_path_factory.mktemp("sdeval")
    cfg = SDTrainConfig(steps=3, batch_size=8, holdout=4900, ema_decay=0.5, ema_bn_batches=1)
    train_vqsvae(d / "vq", VQSVAEConfig(T=2, channels=(4, 8), latent_dim=4, codebook_size=16), cfg, device="cpu",
                 progress=False)
    train_absorbing(d, d / "vq" / "model.pt", SDIDConfig(codebook_size=16, T=2, channels=(8, 8)), cfg, device="cpu",
                    progress=False)
    mnist28 = load_dataset("mnist-bundled", image_size=28)
    model, info = train_classifier(mnist28, "mnist-bundled", steps=60, batch_size=32, width=8, seed=0, progress=False)
    save_classifier(d / "classifier.pt", model, "mnist-bundled", info, reference_statistics(model, mnist28))
    return d


def test_eval_absorbing_temperature_sweep(capsys, tmp_path, absorbing_dir):
    out = tmp_path / "r.json"
    argv = ["eval", str(absorbing_dir / "model.pt"), "--n", "6", "--temperature", "0.5,1", "--seed", "2",
            "--batch-size", "4", "--json", str(out), "--threads", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[:3] == ["temperature", "classifier", "FID"] and len(lines) == 6, lines
    r = json.loads(out.read_text())
    rows = r["by_temperature"]
    assert [row["temperature"] for row in rows] == [0.5, 1.0]
    assert r["settings"]["weights"] == "ema" and r["settings"]["img_size"] == 28 and r["settings"]["n"] == 6
    for row in rows:
        assert np.isfinite(row["classifier_fid"]) and 0 < row["classifier_confidence"] <= 1
    best = min(rows, key=lambda row: row["classifier_fid"])
    assert r["best"] == {"temperature": best["temperature"], "classifier_fid": best["classifier_fid"]}
    assert lines[-1].startswith(f"best: temperature {best['temperature']:g}")
    # the same seed gives the same samples, so the same numbers; the raw weights give others
    assert main([*argv[:-4], "--json", str(out), "--force"]) == 0
    assert [row["classifier_fid"] for row in json.loads(out.read_text())["by_temperature"]] == \
        [row["classifier_fid"] for row in rows]
    assert main([*argv[:-4], "--json", str(out), "--force", "--no-ema"]) == 0
    assert json.loads(out.read_text())["settings"]["weights"] == "raw"


def test_eval_absorbing_errors(capsys, tmp_path, absorbing_dir, model_dir, classifier_file):
    model = str(absorbing_dir / "model.pt")
    fails(capsys, ["eval", model, "--n", "4", "--sampler", "ddpm"], "--sampler", "Spiking-Diffusion")
    fails(capsys, ["eval", model, "--n", "4", "--temperature", "0"], "--temperature")
    fails(capsys, ["eval", model, "--n", "4", "--temperature", "1,1"], "given twice")
    fails(capsys, ["eval", str(model_dir / "model.pt"), "--n", "4", "--temperature", "1"], "--temperature",
          "spiking UNet")
    # a classifier for 16-px images cannot score the 28-px samples
    fails(capsys, ["eval", model, "--n", "4", "--classifier", str(classifier_file[0])], "expects 1x16x16",
          "1x28x28")
