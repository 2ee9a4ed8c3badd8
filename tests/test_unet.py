"""Spiking UNet: reference parameter count, shapes, TSM, direct encoding, threshold scaling."""

import copy

import pytest
import torch

from sdm.train.layers import TSMConv2d
from sdm.train.neuron import IFNeuron, set_threshold_scale
from sdm.train.unet import SpikingUNet, UNetConfig, count_parameters


def small(**kw):
    base = dict(img_ch=1, img_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, T=3)
    base.update(kw)
    return UNetConfig(**base)


def test_reference_parameter_count():
    # SDDPM Spk_UNet, CIFAR-10: ch=128, ch_mult [1,2,2,4], 2 res blocks, 32x32x3, 1000-row sinusoid table.
    model = SpikingUNet(UNetConfig(img_ch=3, img_size=32, ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, T=4))
    n = count_parameters(model)
    assert n == 66_696_413
    assert round(n / 1024 / 1024, 2) == 63.61  # the paper's "#Param 63.61 M" (MiB-style units)
    # TSM adds one gain per conv layer and spiking step. Counting the reference's TSMConv2d layers:
    # stem 2 + down 21 (16 block convs, 2 shortcuts, 3 downsamples) + middle 4 + up 36 (12 blocks, each
    # with a shortcut on the concatenated input) + 3 upsamples + tail 1 = 67 layers.
    assert model.enable_tsm() == 67
    assert count_parameters(model) == n + 67 * 4


@pytest.mark.parametrize("size,ch_mult", [(28, (1, 2, 2)), (32, (1, 2, 2, 4)), (64, (1, 2, 2, 2))])
def test_shapes(size, ch_mult):
    torch.manual_seed(0)
    model = SpikingUNet(UNetConfig(img_ch=3, img_size=size, ch=8, ch_mult=ch_mult, num_res_blocks=1, T=2)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = model(x, torch.tensor([0, 999]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_bad_input_shape_and_config():
    model = SpikingUNet(small())
    with pytest.raises(ValueError, match="denoiser input"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="divisible"):  # width not divisible, height fine
        model(torch.randn(1, model.cfg.img_ch, 16, 15), torch.tensor([1]))
    with pytest.raises(ValueError, match="img_size"):
        UNetConfig(img_size=28, ch_mult=(1, 2, 2, 4))
    with pytest.raises(ValueError, match="unknown UNet config"):
        UNetConfig.from_dict({"chh": 3})


def test_tsm_off_equals_plain_model():
    torch.manual_seed(0)
    plain = SpikingUNet(small())
    tsm = copy.deepcopy(plain)
    assert tsm.enable_tsm() > 0
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 500, 900])
    for mode in ("train", "eval"):
        getattr(plain, mode)()
        getattr(tsm, mode)()
        with torch.no_grad():
            assert torch.equal(plain(x, t), tsm(x, t))
    # gains are trainable and change the output once moved away from 1
    tsm.train()
    tsm(x, t).square().mean().backward()
    gains = [m.tsm_gain for m in tsm.modules() if isinstance(m, TSMConv2d)]
    assert all(g.grad is not None and g.shape == (3,) for g in gains)
    with torch.no_grad():
        gains[3].mul_(torch.tensor([1.2, 0.8, 1.0]))
    plain.eval(), tsm.eval()
    with torch.no_grad():
        assert not torch.equal(plain(x, t), tsm(x, t))
    # a TSM checkpoint round-trips into a TSM-enabled model only
    sd = tsm.state_dict()
    assert any(k.endswith("tsm_gain") for k in sd)
    restored = SpikingUNet(tsm.cfg)
    restored.load_state_dict(sd)
    with pytest.raises(RuntimeError):
        SpikingUNet(small()).load_state_dict(sd)


def test_stem_direct_encoding_equals_repeated_input():
    """Convolving once and broadcasting equals the reference's conv over T repeated copies,
    including BatchNorm's running statistics."""
    torch.manual_seed(0)
    model = SpikingUNet(small()).train()
    stem = model.stem
    ref_conv = copy.deepcopy(stem.conv_in)
    ref_bn = copy.deepcopy(stem.bn_in)
    x = torch.randn(4, 1, 16, 16)
    T = model.cfg.T
    with torch.no_grad():
        y_ref = ref_bn(ref_conv(x.unsqueeze(0).repeat(T, 1, 1, 1, 1).flatten(0, 1)))
        h = stem.bn_in.forward_seq(stem.conv_in(x).unsqueeze(0).expand(T, 4, *y_ref.shape[1:]))
    torch.testing.assert_close(h.flatten(0, 1), y_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(stem.bn_in.running_var, ref_bn.running_var, rtol=1e-6, atol=0)
    torch.testing.assert_close(stem.bn_in.running_mean, ref_bn.running_mean, rtol=1e-6, atol=1e-7)


def test_threshold_scale_reaches_every_neuron_and_changes_output():
    torch.manual_seed(0)
    model = SpikingUNet(small()).eval()
    n_neurons = sum(isinstance(m, IFNeuron) for m in model.modules())
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 600])
    with torch.no_grad():
        base = model(x, t)
        assert set_threshold_scale(model, 0.9) == n_neurons
        assert all(m.effective_threshold == pytest.approx(0.9) for m in model.modules() if isinstance(m, IFNeuron))
        lowered = model(x, t)
        set_threshold_scale(model, 1.0)
        assert torch.equal(model(x, t), base)
    assert not torch.equal(base, lowered)


def test_no_state_between_calls():
    """Membrane state never carries across denoiser calls: the same call twice gives the same output."""
    torch.manual_seed(0)
    model = SpikingUNet(small()).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))
