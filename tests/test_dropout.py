"""The hashed dropout: F.dropout's contract, a mask that the backward reproduces, and seeding."""
import pytest
import torch

from approxgnn.nn.dropout import dropout


def test_identity_when_off():
    x = torch.randn(10, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1001)
    y = dropout(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 5 σ at n = 4e5 is < 0.004
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-4)
    assert abs(y.mean().item() - 1.0) < 0.02  # inverted dropout keeps the expectation


def test_tail_elements_are_masked():
    # 5 elements = one full group of 4 hashed lanes plus a tail group of 1.
    torch.manual_seed(1)
    tails = torch.stack([dropout(torch.ones(5), 0.5)[4] for _ in range(400)])
    assert set(tails.tolist()) == {0.0, 2.0}
    assert 150 < int((tails == 0).sum()) < 250  # the tail lane is random and fair, not fixed


def test_backward_reuses_the_forward_mask():
    torch.manual_seed(2)
    x = torch.randn(37, 11, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.4)
    g = torch.randn_like(y)
    y.backward(g)
    mask = (y != 0).to(x.dtype)
    assert torch.allclose(x.grad, g * mask / 0.6, rtol=1e-4)
    seed_state = torch.get_rng_state()
    assert torch.autograd.gradcheck(lambda t: (torch.set_rng_state(seed_state), dropout(t, 0.3))[1],
                                    (x.detach().requires_grad_(),))


def test_seeded_by_torch_generator():
    x = torch.randn(100, 64)
    torch.manual_seed(3)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.5))
    assert not torch.equal(a, b)  # consecutive calls draw fresh masks


def test_non_contiguous_and_float64():
    torch.manual_seed(4)
    x = torch.randn(64, 32, dtype=torch.float64).t()
    y = dropout(x, 0.5)
    assert y.shape == x.shape and y.dtype == torch.float64
    kept = y != 0
    assert torch.allclose(y[kept], 2 * x[kept])


def test_bad_probability():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(torch.ones(3), 1.0)
