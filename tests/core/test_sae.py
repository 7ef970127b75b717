"""The SAE class: identities on hand-set weights, latent surgery, TopK → JumpReLU."""

from __future__ import annotations

import pytest
import torch

import saegeo as sg
from saegeo.errors import SaegeoError, ShapeError


def random_sae(arch: str = "relu", d_in: int = 8, width: int = 24, **kw) -> sg.SAE:
    threshold = torch.rand(width) * 0.3 if arch == "jumprelu" else None
    return sg.SAE(
        W_enc=torch.randn(d_in, width) / d_in**0.5,
        b_enc=torch.randn(width) * 0.1,
        W_dec=torch.randn(width, d_in),
        b_dec=torch.randn(d_in) * 0.1,
        arch=arch,
        threshold=threshold,
        **kw,
    )


def test_forward_is_decode_of_encode():
    sae = random_sae("jumprelu")
    x = torch.randn(10, 8)
    torch.testing.assert_close(sae.forward(x), sae.decode(sae.encode(x)))


def test_hand_set_weights():
    # Identity encoder/decoder: a ReLU SAE reconstructs non-negative inputs exactly.
    eye = torch.eye(3)
    sae = sg.SAE(W_enc=eye, b_enc=torch.zeros(3), W_dec=eye, b_dec=torch.zeros(3))
    x = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, 0.0]])
    torch.testing.assert_close(sae.encode(x), x)
    torch.testing.assert_close(sae.forward(x), x)
    topk = sae.replace(arch="topk", k=1)
    torch.testing.assert_close(topk.encode(x), torch.tensor([[0.0, 0, 2], [0, 3, 0]]))
    jump = sae.replace(arch="jumprelu", threshold=torch.full((3,), 0.75))
    torch.testing.assert_close(jump.encode(x), torch.tensor([[1.0, 0, 2], [0, 3, 0]]))


def test_select_keeps_latents_exactly():
    sae = random_sae("jumprelu")
    x = torch.randn(10, 8)
    idx = [5, 0, 17]
    torch.testing.assert_close(sae.select(idx).encode(x), sae.encode(x)[:, idx])
    assert sae.select(idx).width == 3
    with pytest.raises(SaegeoError, match=r"^idx=\d+: must lie in \[0, \d+\)"):
        sae.select([99])


@pytest.mark.parametrize("apply_first", [True, False])
@pytest.mark.parametrize("apply_second", [True, False])
def test_concat_keeps_each_latent_as_in_its_own_sae(apply_first, apply_second):
    a = random_sae("relu", apply_b_dec_to_input=apply_first)
    b = random_sae("jumprelu", width=10, apply_b_dec_to_input=apply_second)
    both = sg.concat([a, b])
    x = torch.randn(20, 8)
    torch.testing.assert_close(
        both.encode(x), torch.cat([a.encode(x), b.encode(x)], dim=1), rtol=1e-5, atol=1e-5
    )
    assert both.width == a.width + b.width
    expected = torch.cat([a.encode(x), b.encode(x)], 1) @ both.W_dec + a.b_dec
    torch.testing.assert_close(both.forward(x), expected, rtol=1e-5, atol=1e-5)


def test_concat_matching_pursuit_is_union_dictionary():
    a, b = sg.SAE.from_decoder(torch.randn(6, 8)), sg.SAE.from_decoder(torch.randn(4, 8))
    both = sg.concat([a, b])
    assert both.arch == "matching_pursuit" and both.width == 10
    torch.testing.assert_close(both.W_enc, both.W_dec.T)


def test_concat_refuses_mixed_and_mismatched():
    with pytest.raises(SaegeoError, match="to_jumprelu"):
        sg.concat([random_sae("relu"), random_sae("topk", k=2)])
    with pytest.raises(ShapeError, match="d_in"):
        sg.concat([random_sae(d_in=8), random_sae(d_in=9)])


def test_to_jumprelu_calibrates_mean_l0_to_k():
    sae = random_sae("topk", k=4, width=40)
    acts = torch.randn(500, 8)
    jump = sae.to_jumprelu([acts[:200], acts[200:]])
    l0 = (jump.encode(acts) > 0).sum(-1).float().mean()
    assert jump.arch == "jumprelu"
    assert abs(float(l0) - 4) < 1e-6


def test_from_decoder_is_tied_matching_pursuit():
    W = torch.nn.functional.normalize(torch.randn(12, 6), dim=-1)
    sae = sg.SAE.from_decoder(W, max_iterations=3)
    x = torch.randn(5, 6)
    acts = sae.encode(x)
    assert int((acts > 0).sum(-1).max()) <= 3
    torch.testing.assert_close(sae.W_enc, W.T)


def test_matching_pursuit_keeps_its_gram_matrix_while_the_decoder_is_unchanged(monkeypatch):
    from saegeo.core import pursuit

    torch.manual_seed(0)
    W_dec_FD = torch.nn.functional.normalize(torch.randn(96, 64), dim=-1)
    sae = sg.SAE.from_decoder(W_dec_FD, max_iterations=8, residual_threshold=0.0)
    x_BD = torch.randn(300, 64)
    grams: list[torch.Tensor | None] = []
    real = pursuit.matching_pursuit

    def spy(*args, **kwargs):
        grams.append(kwargs.get("gram_FF"))
        return real(*args, **kwargs)

    monkeypatch.setattr("saegeo.core.architectures.matching_pursuit", spy)

    def reference(sae: sg.SAE, x_BD: torch.Tensor) -> torch.Tensor:
        return real(
            x_BD - sae.b_dec, sae.W_dec, method="direct", max_iterations=8, residual_threshold=0.0
        )

    torch.testing.assert_close(sae.encode(x_BD[:3]), reference(sae, x_BD[:3]))
    assert grams[-1] is None  # three rows: the pursuit recomputes correlations, no Gram matrix
    for rows in (slice(0, 150), slice(150, 300)):
        torch.testing.assert_close(sae.encode(x_BD[rows]), reference(sae, x_BD[rows]))
    assert grams[-1] is not None and grams[-1] is grams[-2]
    torch.testing.assert_close(grams[-1], W_dec_FD @ W_dec_FD.T)
    assert sae.encode(x_BD[:3]) is not None and grams[-1] is grams[-2]  # reused by any call

    sae.W_dec.mul_(0.5)  # an in-place change of the decoder invalidates it
    torch.testing.assert_close(sae.encode(x_BD), reference(sae, x_BD))
    torch.testing.assert_close(grams[-1], sae.W_dec @ sae.W_dec.T)
    assert getattr(sae.replace(max_iterations=8), "_gram_cache", None) is None  # copies start empty


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "gated"}, "unknown architecture"),
        ({"arch": "topk", "k": None}, "0 < k <= width"),
        ({"arch": "jumprelu", "threshold": None}, "threshold"),
        ({"b_dec": torch.zeros(7)}, "b_dec has shape"),
        ({"normalize_activations": "whiten"}, "normalize_activations"),
    ],
)
def test_check_rejects_inconsistent_saes(changes, message):
    with pytest.raises(SaegeoError, match=message):
        random_sae().replace(**changes)


def test_normalised_sae_needs_input_to_decode():
    sae = random_sae(normalize_activations="layer_norm")
    x = torch.randn(3, 8)
    with pytest.raises(SaegeoError, match="needs the input"):
        sae.decode(sae.encode(x))
    sae.decode(sae.encode(x), x)
