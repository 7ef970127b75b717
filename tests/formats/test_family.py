"""Families: ordering, directory loading, d_in checks."""

from __future__ import annotations

import pytest
import torch

import saegeo as sg
from saegeo.errors import ShapeError


def decoder_only(width: int, d_in: int = 6) -> sg.SAE:
    return sg.SAE.from_decoder(torch.randn(width, d_in))


def test_sorted_by_width_from_a_directory(tmp_path):
    for width in (32, 8, 16):
        sg.save_sae(decoder_only(width), tmp_path / f"w{width}")
    family = sg.Family.load(tmp_path)
    assert family.widths == [8, 16, 32]
    assert [small.width for small, _ in family.pairs()] == [8, 16]
    assert family[0].name == "w8"
    assert family[1:].widths == [16, 32]


def test_d_in_mismatch_names_the_file(tmp_path):
    sg.save_sae(decoder_only(8, d_in=6), tmp_path / "a")
    sg.save_sae(decoder_only(16, d_in=7), tmp_path / "b")
    with pytest.raises(ShapeError, match=r"b.*d_in=7"):
        sg.Family.load([tmp_path / "a", tmp_path / "b"])


def test_one_sae_per_width_and_one_site(tmp_path):
    def sae(width: int, **metadata) -> sg.SAE:
        return sg.SAE.from_decoder(torch.randn(width, 4)).replace(metadata=metadata)

    with pytest.raises(sg.SaegeoError, match="one SAE per width"):
        sg.Family([sae(4, name="a"), sae(8), sae(4, name="b")])
    with pytest.raises(sg.SaegeoError, match="hook_name 'blocks.2.hook_resid_post'"):
        sg.Family(
            [
                sae(4, hook_name="blocks.1.hook_resid_post"),
                sae(8, hook_name="blocks.2.hook_resid_post"),
            ]
        )
    assert sg.Family([sae(4, hook_name="h"), sae(8)]).widths == [4, 8]
