"""Statistics over 2 and 3 gloo ranks on the CPU equal the single-process ones; the command
line under torchrun's variables writes on rank 0 only and stops every rank on one error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.distributed import run_ranks, statistics, statistics_and_training

from saegeo.runtime import distributed


def test_without_a_process_group_everything_is_the_single_process_case():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(7) == (0, 7)
    t = torch.arange(3.0)
    assert distributed.all_reduce_(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    assert distributed.all_reduce_sums(2, 3.5) == (2.0, 3.5)
    assert distributed.agree_on_error("boom") == "boom"
    assert distributed.agree_on_error(None) is None


@pytest.mark.parametrize("n", [0, 1, 5, 203])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_spans_are_contiguous_disjoint_and_cover_the_tokens(n, parts):
    spans = [distributed.span(n, p, parts) for p in range(parts)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    sizes = [stop - start for start, stop in spans]
    assert max(sizes) - min(sizes) <= 1


def _same(name, got, want):
    if isinstance(want, tuple):
        assert len(got) == len(want), name
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(f"{name}[{i}]", g, w)
    elif isinstance(want, list):
        assert got == want, name
    else:
        np.testing.assert_allclose(
            np.asarray(got, dtype=np.float64),
            np.asarray(want, dtype=np.float64),
            rtol=1e-9 if np.asarray(want).dtype == np.float64 else 1e-5,
            atol=1e-9 if np.asarray(want).dtype == np.float64 else 1e-6,
            err_msg=name,
        )


@pytest.fixture(scope="module")
def single():
    return statistics()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Statistics and a data-parallel training run on 2 ranks, from one spawn."""
    return run_ranks(statistics_and_training, 2, tmp_path_factory.mktemp("two"))


def _check_statistics(results, single):
    for rank, result in enumerate(results):
        assert result.keys() == single.keys()
        for name, want in single.items():
            _same(f"rank {rank} {name}", result[name], want)


def test_every_statistic_over_two_ranks_equals_the_single_process_one(two_ranks, single):
    _check_statistics([stats for stats, _ in two_ranks], single)


def test_every_statistic_over_three_uneven_ranks_equals_the_single_process_one(single, tmp_path):
    _check_statistics(run_ranks(statistics, 3, tmp_path), single)


def test_the_single_process_statistics_are_not_trivial(single):
    # Otherwise the comparison above could pass on empty or all-zero results.
    assert single["mcs"].any() and single["cosine_pairs"].any() and single["dag_edges"]
    assert (single["delta"] != 0).any() and (single["delta_pursuit"] != 0).any()
    assert single["stats"][4] == 203 and single["metrics"][2] > 0


# --------------------------------------------------------------------------- the command line


def _cli_setup(root):
    from helpers.sae import save_family_and_acts

    save_family_and_acts(root, ((12, 2), (25, 3)), 203)
    x_ND = np.load(root / "acts.npy")
    x_ND[150, 3] = np.nan  # in the second rank's share only
    np.save(root / "bad.npy", x_ND)
    family = [str(root / "w12"), str(root / "w25")]
    acts = ["--acts", str(root / "acts.npy")]

    def argvs(tag):
        return [
            ["classify", *family, *acts, "--out", str(root / f"table-{tag}.csv")],
            ["tree", *family, *acts, "--metric", "masked_cosine", "--threshold", "0.2",
             "--root", "0/1", "--out", str(root / f"tree-{tag}.json")],
            ["stitch", *family, *acts, "--threshold", "0.5", "--out", str(root / f"stitch-{tag}")],
            ["classify", *family, "--acts", str(root / "bad.npy"),
             "--out", str(root / f"bad-{tag}.csv")],
            ["stitch", *family, *acts, "--retrain", "sgd", "--out", str(root / f"sgd-{tag}")],
            ["classify", *family, "--acts", str(root / "bad.npy"), "--skip-nonfinite",
             "--out", str(root / f"skip-{tag}.csv")],
            ["train", *acts, "--widths", "8,16", "--k", "2", "--tokens", "2000",
             "--batch-size", "100", "--eval-tokens", "40", "--out", str(root / f"train-{tag}")],
        ]  # fmt: skip

    return argvs


def test_the_command_line_under_torchrun_writes_once_and_fails_on_every_rank_alike(
    tmp_path, capsys
):
    import json

    import pandas as pd
    from helpers.distributed import cli_runs, free_port

    import saegeo as sg
    from saegeo.cli import main

    argvs = _cli_setup(tmp_path)
    single = []
    for argv in argvs("one"):
        code = main(argv)
        single.append((code, capsys.readouterr().err))
    assert [code for code, _ in single] == [0, 0, 0, 2, 0, 0, 0]
    ranks = run_ranks(
        cli_runs, 2, tmp_path, argvs("two"), [free_port() for _ in argvs("two")], env=True
    )
    for rank, runs in enumerate(ranks):
        assert not any(run["group_left"] for run in runs), "the group outlives main()"
        if rank:  # silent, and writes nothing
            assert all(run["stdout"] == run["stderr"] == "" for run in runs[:4] + runs[5:])
            assert all(run["writes"] == [] for run in runs)
    main_runs = ranks[0]
    for i in range(3):
        assert ranks[1][i]["code"] == main_runs[i]["code"] == 0, main_runs[i]["stderr"]
        assert main_runs[i]["writes"], f"rank 0 wrote nothing for {argvs('two')[i][0]}"
    table = {t: pd.read_csv(tmp_path / f"table-{t}.csv", index_col=0) for t in ("one", "two")}
    pd.testing.assert_frame_equal(table["two"], table["one"], rtol=1e-5)
    tree = {t: json.loads((tmp_path / f"tree-{t}.json").read_text()) for t in ("one", "two")}
    assert json.dumps(tree["two"]["tree"], sort_keys=True) == json.dumps(
        tree["one"]["tree"], sort_keys=True
    )
    stitched = {t: sg.load_sae(tmp_path / f"stitch-{t}") for t in ("one", "two")}
    torch.testing.assert_close(stitched["two"].W_dec, stitched["one"].W_dec, rtol=1e-4, atol=1e-5)

    # Bad rows in the second rank's share: both ranks exit 2; rank 0 prints that rank's line,
    # the very line one process prints; no output appears.
    bad = [runs[3] for runs in ranks]
    assert [run["code"] for run in bad] == [2, 2]
    assert bad[0]["stderr"] == single[3][1] and bad[0]["stderr"].count("\n") == 1
    assert "row 150 holds NaN" in bad[0]["stderr"]  # found by rank 1 alone (rows 101-202)
    assert not (tmp_path / "bad-two.csv").exists()
    # A command part refused under torchrun: one line, exit 2 on both ranks, no output.
    assert [runs[4]["code"] for runs in ranks] == [2, 2]
    assert "--retrain sgd" in ranks[0][4]["stderr"] and ranks[1][4]["stderr"] == ""
    assert not (tmp_path / "sgd-two").exists()
    # Rows dropped by rank 1 alone are reported by rank 0.
    assert [runs[5]["code"] for runs in ranks] == [0, 0]
    assert "skipped 1 rows with NaN or Inf values" in ranks[0][5]["stdout"]
    # Data-parallel training: rank 0 saves the family (rank 1's silence and no writes: above).
    assert [runs[6]["code"] for runs in ranks] == [0, 0] and ranks[0][6]["writes"]
    assert sg.Family.load(tmp_path / "train-two").widths == [8, 16]


# --------------------------------------------------------------------------- training


def test_data_parallel_training_keeps_ranks_in_step_and_learns_as_one_process(two_ranks):
    from helpers.distributed import train_toy

    single = train_toy("batchtopk", 500)  # the batch of both ranks together
    ranks = [trained for _, trained in two_ranks]
    for name in ("W_dec", "W_enc", "threshold"):
        np.testing.assert_array_equal(ranks[1][name], ranks[0][name], err_msg=name)
    # The same tokens and steps; the held-out fit is as good.
    assert (ranks[0]["tokens"], ranks[0]["steps"]) == (single["tokens"], single["steps"])
    assert not np.array_equal(ranks[0]["W_dec"], single["W_dec"])
    assert ranks[0]["fvu"] < single["fvu"] + 0.05, (ranks[0]["fvu"], single["fvu"])
