"""Training steps' helpers."""

from __future__ import annotations

import pytest
import torch

from saegeo.runtime.devices import host_syncs
from saegeo.training import losses
from saegeo.training.config import TrainConfig
from saegeo.training.step import aux_k_loss, forward_step, geometric_median, init_state


def test_geometric_median_resists_outliers() -> None:
    points = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 100.0)])
    median = geometric_median(points)
    torch.testing.assert_close(median, torch.ones(4), atol=0.1, rtol=0)
    assert float(points.mean(0)[0]) > 9.0


@pytest.mark.parametrize(("n_dead", "aux_k"), [(5, 3), (5, 8), (0, 3)])
def test_aux_k_loss_matches_dense(n_dead: int, aux_k: int) -> None:
    """Each token's aux_k largest pre-activations among the dead latents reconstruct the
    residual; value and gradients equal the dense computation's."""
    batch, d_in, width = 32, 12, 40
    config = TrainConfig(arch="topk", k=4, aux_k=aux_k, dead_tokens=100)
    x_BD, residual_BD = torch.randn(batch, d_in), torch.randn(batch, d_in)
    state = init_state(config, width, x_BD, torch.device("cpu"))
    dead = torch.randperm(width)[:n_dead]
    state.since_fired[dead] = 100
    assert state.W_enc is not None and state.b_enc is not None
    pre_BF = (x_BD @ state.W_enc + state.b_enc).detach()
    fast = aux_k_loss(config, state, x_BD, pre_BF, residual_BD)
    if n_dead == 0:
        assert fast is None
        return
    assert fast is not None
    fast.backward()
    params = (state.W_enc, state.b_enc, state.W_dec)
    fast_grads = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None

    dead_F = torch.zeros(width, dtype=torch.bool)
    dead_F[dead] = True
    dense_pre = (x_BD @ state.W_enc + state.b_enc).masked_fill(~dead_F, -torch.inf)
    top = dense_pre.topk(min(aux_k, n_dead), dim=1)
    acts = torch.zeros(batch, width).scatter(1, top.indices, top.values).relu()
    dense = config.aux_coefficient * losses.auxk_loss(
        residual_BD, acts @ state.W_dec, min(n_dead / aux_k, 1)
    )
    torch.testing.assert_close(fast, dense)
    dense.backward()
    for got, p in zip(fast_grads, params, strict=True):
        torch.testing.assert_close(got, p.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("matmul_dtype", [torch.float32, torch.bfloat16])
def test_a_topk_step_waits_for_the_gpu_once(matmul_dtype) -> None:
    """Forward, backward and Adam of a TopK step wait only to count the dead latents (aux-k);
    offsets, fired latents, MSE and L0 stay on the device."""
    device = torch.device("cuda")
    x_BD = torch.randn(512, 64, device=device)
    config = TrainConfig(arch="topk", width=256, k=8, device="cuda")
    state = init_state(config, 256, x_BD, device)
    optimizer = torch.optim.Adam(state.parameters(), lr=1e-3)

    def step() -> None:
        out = forward_step(config, state, x_BD, 0.0, torch.Generator(), 0.1, matmul_dtype)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step()  # first calls set up kernels and optimizer state
    torch.cuda.synchronize()
    waits = host_syncs(step)
    assert waits == 1, f"{waits} waits for the GPU"
