"""Training with bfloat16 products: the same step as float32 to bf16 accuracy, a comparable loss."""

from __future__ import annotations

import pytest
import torch

from saegeo.training.config import TrainConfig
from saegeo.training.sparse_ops import exact_values, select_topk
from saegeo.training.step import forward_step, init_state
from saegeo.training.toy import ToyConfig, make_toy_model
from saegeo.training.trainer import train_sae

D, F = 32, 64


def test_exact_values_recompute_a_low_precision_selection():
    g = torch.Generator().manual_seed(0)
    x_BD, W_DF, b_F = (
        torch.randn(50, D, generator=g),
        torch.randn(D, F, generator=g),
        torch.randn(F),
    )
    rough = (x_BD.bfloat16() @ W_DF.bfloat16()).float() + b_F
    sel = exact_values(select_topk(rough, 5), x_BD, W_DF, b_F)
    dense = x_BD @ W_DF + b_F
    torch.testing.assert_close(sel.pre, dense[sel.rows, sel.cols], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "matryoshka_batchtopk"])
def test_a_bfloat16_step_matches_float32(arch):
    g = torch.Generator().manual_seed(1)
    x_BD = torch.randn(256, D, generator=g)
    config = TrainConfig(arch=arch, width=F, k=4, device="cpu")  # type: ignore[arg-type]
    steps = {}
    for dtype in (torch.float32, torch.bfloat16):
        state = init_state(config, F, x_BD, torch.device("cpu"))
        out = forward_step(
            config, state, x_BD, 0.1, torch.Generator().manual_seed(2), 0.1, matmul_dtype=dtype
        )
        out.loss.backward()
        assert out.loss.dtype == torch.float32
        steps[dtype] = (out.loss.item(), torch.cat([p.grad.flatten() for p in state.parameters()]))
    (loss32, grad32), (loss16, grad16) = steps[torch.float32], steps[torch.bfloat16]
    # bfloat16 keeps 8 bits of mantissa: about 0.4% per product.
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)) > 0.99


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_bfloat16_training_reaches_the_float32_loss(arch):
    toy = make_toy_model(ToyConfig(n_roots=4, branching=3, depth=1, d=D, root_prob=0.25))
    store = toy.to_store(60_000, seed=1)
    fvu = {}
    for dtype in ("float32", "bfloat16"):
        config = TrainConfig(
            arch=arch,  # type: ignore[arg-type]
            width=F,
            k=3,
            tokens=60_000,
            batch_size=512,
            eval_tokens=8192,
            matmul_dtype=dtype,  # type: ignore[arg-type]
            progress=False,
        )
        _, report = train_sae(store, config)
        assert report.metrics is not None
        fvu[dtype] = report.metrics.fvu
    assert fvu["bfloat16"] == pytest.approx(fvu["float32"], rel=0.1, abs=0.01)
