"""A CPU pursuit split across threads gives the codes of one thread, and restores the setting."""

from __future__ import annotations

import pytest
import torch

from saegeo.core.pursuit import matching_pursuit
from saegeo.core.sae import SAE


@pytest.mark.parametrize("method", ["gram", "direct"])
def test_threads_give_the_single_thread_codes(method):
    g = torch.Generator().manual_seed(0)
    W_dec_FD = torch.nn.functional.normalize(torch.randn(300, 64, generator=g), dim=-1)
    x_BD = torch.randn(517, 64, generator=g)
    rules = dict(max_iterations=12, residual_threshold=0.3, method=method, batch_size=100)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = matching_pursuit(x_BD, W_dec_FD, **rules)
        torch.set_num_threads(3)
        three = matching_pursuit(x_BD, W_dec_FD, **rules)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_threads_run_in_the_callers_mode_and_give_saelens_codes(mode):
    make_lens_sae = pytest.importorskip("helpers.saelens").make_lens_sae
    lens = make_lens_sae("matching_pursuit", d_in=64, d_sae=300, max_iterations=12)
    ours = SAE.from_decoder(
        lens.W_dec.detach(), lens.b_dec.detach(), max_iterations=12, residual_threshold=1e-2
    )
    x_BD = torch.randn(517, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with mode():
            x_BD = x_BD.clone()  # an inference tensor under inference mode
            expected_BF = lens.encode(x_BD)
            codes_BF = ours.encode(x_BD)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(codes_BF != 0, expected_BF != 0)
    torch.testing.assert_close(codes_BF, expected_BF, rtol=1e-5, atol=1e-5)
