"""The architecture registry: lookup, unions, and each architecture's rules."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

import saegeo as sg
from saegeo.core.architectures import ARCHITECTURES, architecture, union_kind
from saegeo.core.sae import Arch
from saegeo.errors import SaegeoError


def sae_of(arch: str, width: int = 6, d_in: int = 4) -> sg.SAE:
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(width, d_in, generator=g)
    if arch == "matching_pursuit":
        return sg.SAE.from_decoder(W_dec)
    return sg.SAE(
        W_enc=torch.randn(d_in, width, generator=g),
        b_enc=torch.randn(width, generator=g),
        W_dec=W_dec,
        b_dec=torch.randn(d_in, generator=g),
        arch=arch,
        threshold=torch.rand(width, generator=g) if arch == "jumprelu" else None,
        k=2 if arch == "topk" else None,
    )


def test_registry_covers_every_arch_of_the_sae():
    assert tuple(ARCHITECTURES) == get_args(Arch)
    for name, arch in ARCHITECTURES.items():
        assert arch.name == name and sae_of(name).architecture is arch


def test_unknown_architecture_names_the_source():
    with pytest.raises(SaegeoError, match="x/cfg.json: unknown architecture 'gated'"):
        architecture("gated", "x/cfg.json")


@pytest.mark.parametrize(
    "archs, kind",
    [
        (["relu", "jumprelu"], "additive"),
        (["topk", "topk"], "topk"),
        (["matching_pursuit", "matching_pursuit"], "pursuit"),
    ],
)
def test_union_kinds(archs, kind):
    assert union_kind([sae_of(a) for a in archs], "test") == kind


def test_mixed_unions_are_refused_with_a_hint_for_topk():
    with pytest.raises(SaegeoError, match="to_jumprelu"):
        union_kind([sae_of("topk"), sae_of("relu")], "concat()")
    with pytest.raises(SaegeoError, match="cannot combine matching_pursuit, relu"):
        union_kind([sae_of("relu"), sae_of("matching_pursuit")], "concat()")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_encode_is_the_activation_of_the_pre_activations(arch):
    sae, x = sae_of(arch), torch.randn(8, 4)
    if sae.architecture.tied:
        with pytest.raises(SaegeoError, match="no single pre-activation"):
            sae.pre_acts(x)
        return
    pre = x @ sae.W_enc + sae.b_enc - sae.b_dec @ sae.W_enc
    if arch == "relu":
        expected = pre.relu()
    elif arch == "jumprelu":
        expected = pre.relu() * (pre > sae.threshold)
    else:
        top = pre.topk(2)
        expected = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    torch.testing.assert_close(sae.encode(x), expected)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_to_additive_gives_independent_latents(arch):
    sae, x = sae_of(arch), torch.randn(64, 4)
    additive = sae.to_additive(x)
    assert additive.architecture.union == ("pursuit" if arch == "matching_pursuit" else "additive")
    if arch == "topk":
        assert additive.arch == "jumprelu"
        assert float((additive.encode(x) != 0).sum(1).float().mean()) == pytest.approx(2, abs=0.05)
    else:
        assert additive is sae
