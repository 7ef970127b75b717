"""The stitching paper's novelty analysis: kinds, delta-MSE signs and cumulative curves per pair."""

from __future__ import annotations

from helpers.sae import relu_pair

from saegeo.effects.explained import roc_auc
from saegeo.effects.novelty import family_novelty, kind_sign_table, novelty_table


def test_novelty_tables_and_family_analysis():
    small, large, acts = relu_pair()
    table = novelty_table(small, large, acts, device="cpu")
    assert list(table.columns) == [
        "max_cos",
        "nearest",
        "kind",
        "residual",
        "delta_mse",
        "explained",
    ]
    cells = kind_sign_table(table)
    assert cells.values.sum() == large.width and list(cells.index) == ["novel", "reconstruction"]
    assert int(cells.loc["novel", "delta_mse < 0"]) == int(
        ((table["kind"] == "novel") & (table["delta_mse"] < 0)).sum()
    )
    middle = large.select(range(9))
    result = family_novelty([small, middle, large], acts, points=3, device="cpu")
    assert result.summary["large_width"].tolist() == [9, 12]
    assert result.summary["n_novel"].sum() == (result.features["kind"] == "novel").sum()
    assert set(result.curves["kind"]) == {"novel", "reconstruction"}
    last = result.features[result.features["pair"] == 1].dropna(subset=["explained"])
    lowers = (last["delta_mse"] < 0).to_numpy()
    for score, sign in (("max_cos", -1), ("residual", 1), ("explained", -1)):
        expected = roc_auc(sign * last[score].to_numpy(), lowers)
        assert result.summary[f"auc_{score}"][1] == expected and 0 <= expected <= 1
    first = result.curves[(result.curves["pair"] == 0) & (result.curves["n_added"] == 0)]
    assert first["mse"].nunique() == 1  # both curves start at the small SAE
    geometry_only = family_novelty([small, large])
    assert "delta_mse" not in geometry_only.features and geometry_only.curves.empty
