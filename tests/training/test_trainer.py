"""Training on toy hierarchies: losses fall, L0 hits its target, families round-trip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from saegeo.acts.store import ActivationStore, ShardWriter
from saegeo.cli import main
from saegeo.effects.metrics import evaluate
from saegeo.errors import SaegeoError
from saegeo.formats.family import Family
from saegeo.formats.sae_files import load_sae, save_sae
from saegeo.training.toy import ToyConfig, ToyModel, make_toy_model
from saegeo.training.trainer import (
    TrainConfig,
    _iter_rows,
    _shuffled_batches,
    train_family,
    train_sae,
)

K = 3


@pytest.fixture(scope="module")
def toy() -> ToyModel:
    return make_toy_model(
        ToyConfig(
            n_roots=4,
            branching=3,
            depth=1,
            d=32,
            root_prob=0.25,
            child_prob=0.15,
            magnitude_std=0.1,
        )
    )


@pytest.fixture(scope="module")
def store(toy: ToyModel) -> ActivationStore:
    return toy.to_store(60_000, seed=1)


def _config(**changes) -> TrainConfig:
    settings = {
        "width": 32,
        "k": K,
        "tokens": 60_000,
        "batch_size": 512,
        "eval_tokens": 8192,
        "progress": False,
        **changes,
    }
    return TrainConfig(**settings)


@pytest.mark.parametrize(
    "arch",
    ["topk", "batchtopk", "relu", "matryoshka_batchtopk", "matryoshka_relu", "matching_pursuit"],
)
def test_training_reduces_error_and_hits_l0(arch: str, store: ActivationStore) -> None:
    sae, report = train_sae(store, _config(arch=arch))
    metrics = report.metrics
    assert metrics is not None and metrics.n_tokens == 8192
    # history[0] is the first batch's loss, before any update
    assert metrics.fvu < 0.5 * report.history[0]["fvu"] and metrics.fvu < 0.15
    assert report.tokens == report.steps * 512
    held_out = store.read(limit=8192)
    active = (sae.encode(held_out) != 0).sum(1)
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk", "matching_pursuit"):
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    if arch == "topk":
        assert sae.arch == "topk" and sae.k == K
        assert int(active.max()) == K and float(active.float().mean()) > K - 0.05
    elif arch in ("batchtopk", "matryoshka_batchtopk"):
        # saved as JumpReLU with the running threshold; mean L0 ≈ k at inference
        assert sae.arch == "jumprelu" and report.threshold is not None
        torch.testing.assert_close(sae.threshold, torch.full((32,), report.threshold))
        assert abs(metrics.l0 - K) < 0.25 * K
    elif arch == "matching_pursuit":
        assert sae.arch == "matching_pursuit" and sae.max_iterations == K
        assert int(active.max()) <= K
    if arch.startswith("matryoshka"):
        widths = sae.metadata["matryoshka_widths"]
        assert widths == [4, 8, 16, 32]
        fvus = [evaluate(sae.select(range(w)), held_out, device="cpu").fvu for w in widths]
        assert all(a >= b - 1e-6 for a, b in zip(fvus, fvus[1:], strict=False))


@pytest.mark.parametrize("sparsity, coefficients", [("log", [0.03, 0.3, 1.0]), ("l1", [0.3, 3.0])])
def test_relu_l0_decreases_with_penalty(
    sparsity: str, coefficients: list[float], store: ActivationStore
) -> None:
    l0s = []
    for coefficient in coefficients:
        _, report = train_sae(
            store, _config(arch="relu", sparsity=sparsity, sparsity_coefficient=coefficient)
        )
        l0s.append(report.metrics.l0)
    assert all(a > b for a, b in zip(l0s, l0s[1:], strict=False)), l0s


def test_relu_target_l0_steers_the_penalty(store: ActivationStore) -> None:
    l0s = [
        train_sae(store, _config(arch="relu", target_l0=target, tokens=120_000))[1].metrics.l0
        for target in (1.0, 6.0)
    ]
    assert l0s[0] < 2.0 < l0s[1], l0s


def test_pareto_prefixes(store: ActivationStore) -> None:
    sae, report = train_sae(
        store, _config(arch="matryoshka_batchtopk", prefixes="pareto", n_prefixes=4)
    )
    assert report.metrics.fvu < 0.25 and sae.metadata["matryoshka_widths"] == [4, 8, 16, 32]
    assert sae.metadata["training"]["prefixes"] == "pareto"


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)], ids=["cpu", "cuda"]
)
@pytest.mark.parametrize("arch", ["batchtopk", "topk", "relu", "matching_pursuit"])
def test_deterministic_given_seed(store: ActivationStore, arch: str, device: str) -> None:
    """Bit-for-bit the same SAE from the same seed, on a CPU and on CUDA (whose atomic adds
    would sum in a different order each run)."""
    a, _ = train_sae(store, _config(arch=arch, tokens=10_000, device=device))
    b, _ = train_sae(store, _config(arch=arch, tokens=10_000, device=device))
    c, _ = train_sae(store, _config(arch=arch, tokens=10_000, device=device, seed=1))
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_dec, b.b_dec)
    if arch == "batchtopk":
        assert torch.equal(a.threshold, b.threshold)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_input_scale_is_folded_into_the_codes(store: ActivationStore) -> None:
    x = store.read()
    small, small_report = train_sae(x, _config(arch="topk", tokens=10_000))
    large, large_report = train_sae(x * 100, _config(arch="topk", tokens=10_000))
    assert large_report.scale == pytest.approx(small_report.scale / 100, rel=1e-5)
    assert large_report.metrics.fvu == pytest.approx(small_report.metrics.fvu, rel=1e-2)
    torch.testing.assert_close(large.W_dec, small.W_dec, atol=1e-3, rtol=0)
    torch.testing.assert_close(large.b_dec, small.b_dec * 100, atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("arch", ["matryoshka_batchtopk", "topk"])
def test_recovers_toy_directions(arch: str, toy: ToyModel, store: ActivationStore) -> None:
    """Most true directions get a latent within cos 0.9 of them.

    In d=32 a random unit vector's best cosine with 32 random decoder rows is about 0.4, so
    0.9 (26 degrees) is never reached by chance; it is below 1 because the runs are short and
    because Matryoshka parents keep a small mixture of their children (the Matryoshka SAE write-up).
    """
    k = 2 if arch == "matryoshka_batchtopk" else 4
    sae, _ = train_sae(
        store, _config(arch=arch, k=k, tokens=150_000, matryoshka_widths=(4, 16, 32))
    )
    recovered = toy.max_cos(sae.W_dec) > 0.9
    assert int(recovered.sum()) >= 13, toy.max_cos(sae.W_dec)


def test_family_round_trip(tmp_path, store: ActivationStore) -> None:
    run = train_family(store, [32, 16], _config(arch="batchtopk", tokens=20_000), tmp_path)
    assert run.family.widths == [16, 32]
    assert [p.name for p in run.paths] == ["batchtopk-16", "batchtopk-32"]
    loaded = Family.load(tmp_path)
    assert loaded.widths == [16, 32]
    x = store.read(limit=500)
    for trained, back in zip(run.family, loaded, strict=True):
        assert back.arch == "jumprelu"
        torch.testing.assert_close(back.encode(x), trained.encode(x))
        torch.testing.assert_close(back.forward(x), trained.forward(x))
    summary = json.loads((tmp_path / "family.json").read_text())
    assert [m["width"] for m in summary["members"]] == [16, 32]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["width"]) for r in rows] == [16, 32]
    assert float(rows[0]["eval_fvu"]) == pytest.approx(run.reports[0].metrics.fvu)


@pytest.mark.parametrize("arch", ["topk", "matryoshka_relu", "matching_pursuit"])
def test_trained_saes_round_trip(arch: str, tmp_path, store: ActivationStore) -> None:
    sae, _ = train_sae(store, _config(arch=arch, tokens=5_000, eval_tokens=0))
    back = load_sae(save_sae(sae, tmp_path / arch))
    x = store.read(limit=300)
    assert back.arch == sae.arch
    torch.testing.assert_close(back.forward(x), sae.forward(x))
    if arch == "matryoshka_relu":
        assert Family.load(tmp_path / arch).widths == [4, 8, 16, 32]


def test_saelens_reads_trained_batchtopk(tmp_path, store: ActivationStore) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    sae, _ = train_sae(store, _config(arch="batchtopk", tokens=5_000, eval_tokens=0))
    lens = sae_lens.SAE.load_from_disk(str(save_sae(sae, tmp_path / "bt")))
    x = store.read(limit=300)
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)


def test_bad_configs_raise(store: ActivationStore) -> None:
    with pytest.raises(SaegeoError, match="k=64"):
        train_sae(store, _config(k=64))
    with pytest.raises(SaegeoError, match="widths"):
        train_family(store, [], _config())


def test_errors_name_python_fields_and_the_cli_names_flags(tmp_path, capsys) -> None:
    with pytest.raises(SaegeoError, match=r"^TrainConfig\.k=0: must be >= 1$"):
        TrainConfig(k=0)
    with pytest.raises(SaegeoError, match=r"^TrainConfig\.lr=-1\.0: must be > 0$"):
        TrainConfig(lr=-1.0)
    x = torch.randn(2000, 8)
    diverging = TrainConfig(
        arch="relu", width=16, tokens=4000, batch_size=200, lr=1e8, eval_tokens=0, progress=False
    )
    with pytest.raises(SaegeoError, match=r"^TrainConfig\.lr=100000000\.0: training relu-16 "):
        train_sae(x, diverging)
    acts = tmp_path / "acts.npy"
    np.save(acts, x.numpy())
    base = ["train", "--acts", str(acts), "--widths", "16", "--out", str(tmp_path / "f")]
    assert main([*base, "--k", "0"]) == 2
    assert capsys.readouterr().err == "saegeo train: error: --k 0: must be >= 1\n"
    flags = ["--arch", "relu", "--lr", "1e8", "--tokens", "4000", "--batch-size", "200"]
    assert main([*base, *flags, "--eval-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("saegeo train: error: --lr 100000000.0: training relu-16 diverged")
    assert err.endswith("; lower it\n") and "TrainConfig" not in err


def test_cli_train(tmp_path, capsys, store: ActivationStore) -> None:
    acts = tmp_path / "acts.npy"
    np.save(acts, store.read(limit=20_000).numpy())
    out = tmp_path / "family"
    code = main(
        [
            "train",
            "--acts",
            str(acts),
            "--arch",
            "topk",
            "--widths",
            "16,32",
            "--k",
            "3",
            "--tokens",
            "8000",
            "--batch-size",
            "512",
            "--eval-tokens",
            "2000",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "topk-32" in capsys.readouterr().out
    assert Family.load(out).widths == [16, 32]
    assert main(["train", "--acts", str(acts), "--widths", "16,x", "--out", str(out)]) == 2
    assert "--widths" in capsys.readouterr().err


def test_matryoshka_widths_beyond_the_width_are_reported_once(store, caplog) -> None:
    config = _config(arch="matryoshka_batchtopk", matryoshka_widths=(8, 16, 64), tokens=5120)
    with caplog.at_level("WARNING", logger="saegeo.training.trainer"):
        sae, _ = train_sae(store, config)
    assert sae.metadata["matryoshka_widths"] == [8, 16, 32]
    assert [r.getMessage() for r in caplog.records].count(
        "matryoshka_widths [8, 16, 64] exceed the width 32; keeping [8, 16, 32]"
    ) == 1


def test_snapshots_are_the_sae_as_it_stood(store: ActivationStore) -> None:
    seen: dict[int, object] = {}
    config = _config(arch="batchtopk", tokens=10 * 512)
    final, _ = train_sae(store, config, snapshots=[3, 10], on_snapshot=seen.__setitem__)
    assert sorted(seen) == [3, 10]
    # The last snapshot is the finished SAE; the early one differs from it.
    assert torch.equal(seen[10].W_dec, final.W_dec)
    assert torch.equal(seen[10].threshold, final.threshold)
    assert not torch.equal(seen[3].W_dec, final.W_dec)


def _shuffled_reference(store, start, batch_size, buffer_tokens, generator, epochs):
    """The store's windows (as the trainer reads them), each appended to the last one's
    leftover, permuted whole and cut into batches."""
    leftover = torch.empty(0, store.d_in)
    for _ in range(epochs):
        for chunk in _iter_rows(store, start, store.n_tokens, buffer_tokens, torch.device("cpu")):
            pool = torch.cat([leftover, chunk])
            pool = pool[torch.randperm(pool.shape[0], generator=generator)]
            n_full = pool.shape[0] // batch_size * batch_size
            yield from pool[:n_full].split(batch_size)
            leftover = pool[n_full:]


@pytest.mark.parametrize("buffer_tokens", [40, 1000])
def test_shuffled_batches_match_the_reference(tmp_path, buffer_tokens: int) -> None:
    writer = ShardWriter(tmp_path / "s", 6, shard_tokens=70)
    writer.add(torch.randn(200, 6), doc_ids=torch.arange(200, dtype=torch.int32) // 10)
    store = writer.close()
    fast = _shuffled_batches(
        store, 15, 16, buffer_tokens, torch.Generator().manual_seed(3), torch.device("cpu")
    )
    reference = list(
        _shuffled_reference(store, 15, 16, buffer_tokens, torch.Generator().manual_seed(3), 3)
    )
    assert len(reference) > 30
    for expected in reference:
        torch.testing.assert_close(next(fast), expected, rtol=0, atol=0)
