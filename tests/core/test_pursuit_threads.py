"""A CPU pursuit split across threads gives the codes of one thread, and restores the setting."""

from __future__ import annotations

import pytest
import torch

from saegeo.core.pursuit import matching_pursuit


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
