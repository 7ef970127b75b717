"""Swap groups with their effect: the decoder groups joined with swap_deltas."""

from __future__ import annotations

import pandas as pd
from helpers.sae import relu_pair

import saegeo as sg
from saegeo.effects.delta import swap_deltas
from saegeo.geometry.classify import swap_groups as decoder_swap_groups


def test_swap_groups_with_acts_add_deltas():
    small, large, acts = relu_pair()
    groups = sg.swap_groups(small, large, threshold=0.7, acts=acts, device="cpu")
    assert len(groups) >= 1
    expected = swap_deltas(small, large, acts, groups["small"], groups["large"], device="cpu")
    pd.testing.assert_frame_equal(groups[["delta_mse", "delta_l0"]], expected)
    pd.testing.assert_frame_equal(
        groups.drop(columns=["delta_mse", "delta_l0"]),
        decoder_swap_groups(small, large, threshold=0.7, device="cpu"),
    )
    empty = sg.swap_groups(small, large, threshold=0.999999, acts=acts)
    assert list(empty.columns)[-2:] == ["delta_mse", "delta_l0"] and empty.empty
