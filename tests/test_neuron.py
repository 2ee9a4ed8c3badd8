"""IF neuron: dynamics against hand-computed values, threshold scaling, surrogate gradient."""

import math

import pytest
import torch

from sdm.testing.oracles import if_step, multistep_if_reference
from sdm.train.neuron import IFNeuron, atan_surrogate, multistep_if, set_threshold_scale


def test_if_dynamics_hand_computed():
    # one neuron, theta = 1: charge 0.6 -> 1.2 fires (reset to 0) -> 0.6 -> 1.2 fires
    x = torch.tensor([0.6, 0.6, 0.6, 0.6]).view(4, 1)
    assert multistep_if(x, theta=1.0).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    # hard reset to 0, not subtraction: 1.5 fires, then 0.4 alone stays below threshold
    x = torch.tensor([1.5, 0.4, 0.4, 0.4]).view(4, 1)
    assert multistep_if(x, theta=1.0).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    # v == theta fires (H(0) = 1, spikingjelly's convention)
    assert multistep_if(torch.tensor([[1.0]]), theta=1.0).item() == 1.0
    # negative currents drive the membrane down and delay the next spike
    x = torch.tensor([-0.5, 0.9, 0.9, 0.9]).view(4, 1)
    assert multistep_if(x, theta=1.0).flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_leak_hand_computed():
    # decay 0.5: v = 0.8 -> 0.4 + 0.8 = 1.2 fires -> 0.8 -> 1.2 fires
    x = torch.full((4, 1), 0.8)
    assert multistep_if(x, theta=1.0, decay=0.5).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    # decay 0.2: 0.8 -> 0.96 -> 0.992 never reaches 1
    assert multistep_if(x, theta=1.0, decay=0.2).sum().item() == 0.0


def test_threshold_scaling():
    x = torch.full((1, 1), 0.998)
    n = IFNeuron(theta=1.0)
    assert n(x).item() == 0.0
    set_threshold_scale(n, 0.997)  # inhibitory guidance lowers theta to 0.997
    assert n.effective_threshold == pytest.approx(0.997)
    assert n(x).item() == 1.0
    set_threshold_scale(n, 1.003)
    assert n(torch.full((1, 1), 1.001)).item() == 0.0
    with pytest.raises(ValueError):
        set_threshold_scale(n, 0.0)


def test_if_step_matches_multistep():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5) * 0.8 + 0.3
    v = torch.zeros(3, 5)
    steps = []
    for t in range(6):
        s, v, _ = if_step(v, x[t], 0.9, 0.7)
        steps.append(s)
    assert torch.equal(torch.stack(steps), multistep_if(x, 0.9, 0.7))


def test_surrogate_values():
    # ATan surrogate: alpha / (2 (1 + (pi/2 alpha u)^2)), alpha = 2
    assert atan_surrogate(torch.tensor(0.0)).item() == pytest.approx(1.0)
    assert atan_surrogate(torch.tensor(0.5)).item() == pytest.approx(1.0 / (1.0 + (math.pi / 2) ** 2))


@pytest.mark.parametrize("decay", [1.0, 0.6])
def test_fused_gradient_equals_stepwise_autograd(decay):
    """The hand-written BPTT (with gradient through the reset) equals autograd on the step-by-step graph."""
    torch.manual_seed(1)
    x = (torch.randn(5, 4, 7, dtype=torch.float64) * 0.7 + 0.4).requires_grad_()
    w = torch.randn(5, 4, 7, dtype=torch.float64)
    (multistep_if(x, 1.0, decay) * w).sum().backward()
    g_fused = x.grad.clone()
    x.grad = None
    s_ref = multistep_if_reference(x, 1.0, decay)
    (s_ref * w).sum().backward()
    assert torch.equal(multistep_if(x.detach(), 1.0, decay), s_ref.detach())
    torch.testing.assert_close(g_fused, x.grad, rtol=1e-12, atol=1e-12)


def test_single_step_gradient_hand_computed():
    # T = 1: ds/dx = sg(x - theta)
    x = torch.tensor([[0.7]], requires_grad=True)
    multistep_if(x, 1.0).sum().backward()
    assert x.grad.item() == pytest.approx(1.0 / (1.0 + (math.pi * -0.3) ** 2))


def test_invalid_parameters():
    with pytest.raises(ValueError):
        IFNeuron(theta=0.0)
    with pytest.raises(ValueError):
        IFNeuron(decay=1.5)
