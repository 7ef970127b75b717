"""Training steps' helpers."""

from __future__ import annotations

import pytest
import torch

from saegeo.core.devices import host_syncs
from saegeo.training.config import TrainConfig
from saegeo.training.step import forward_step, geometric_median, init_state


def test_geometric_median_resists_outliers() -> None:
    points = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 100.0)])
    median = geometric_median(points)
    torch.testing.assert_close(median, torch.ones(4), atol=0.1, rtol=0)
    assert float(points.mean(0)[0]) > 9.0


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
