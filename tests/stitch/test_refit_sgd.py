"""The SGD decoder refit: against the exact optimum, and checkpoints that resume."""

from __future__ import annotations

import pytest
import torch
from helpers.refit import N, acts, random_sae

from saegeo.effects.metrics import evaluate
from saegeo.errors import SaegeoError
from saegeo.stitch.refit import refit_exact
from saegeo.stitch.refit_sgd import refit_sgd


@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale", "layer_norm"])
def test_sgd_never_better_than_exact(normalize):
    sae, x = random_sae(normalize_activations=normalize), acts()
    exact = refit_exact(sae, x, device="cpu", progress=False)
    sgd = refit_sgd(sae, x, tokens=40 * N, lr=3e-2, batch_size=100, device="cpu", progress=False)
    assert sgd.before.mse == pytest.approx(exact.before.mse, rel=1e-5)
    assert sgd.after.mse < sgd.before.mse
    assert exact.after.mse <= sgd.after.mse * (1 + 1e-6)
    assert evaluate(sgd.sae, x, device="cpu").mse == pytest.approx(sgd.after.mse, rel=1e-5)


def test_sgd_converges_to_exact():
    sae, x = random_sae(), acts()
    exact = refit_exact(sae, x, ridge=0.0, device="cpu", progress=False)
    sgd = refit_sgd(sae, x, tokens=300 * N, lr=0.1, batch_size=N, device="cpu", progress=False)
    assert sgd.after.mse == pytest.approx(exact.after.mse, rel=1e-3)


def test_sgd_checkpoint_resumes(tmp_path):
    sae, x = random_sae(), acts()
    settings = {
        "tokens": 30 * 100,
        "lr": 1e-2,
        "batch_size": 100,
        "device": "cpu",
        "progress": False,
    }
    straight = refit_sgd(sae, x, **settings)

    def interrupt(step: int, loss: float) -> None:
        if step == 17:
            raise KeyboardInterrupt

    path = tmp_path / "refit.pt"
    with pytest.raises(KeyboardInterrupt):
        refit_sgd(sae, x, checkpoint=path, checkpoint_every=5, callback=interrupt, **settings)
    assert path.exists()
    steps: list[int] = []
    resumed = refit_sgd(
        sae,
        x,
        checkpoint=path,
        checkpoint_every=5,
        callback=lambda step, loss: steps.append(step),
        **settings,
    )
    assert steps[0] == 16  # resumed after the checkpoint at step 15
    torch.testing.assert_close(resumed.sae.W_dec, straight.sae.W_dec)
    torch.testing.assert_close(resumed.sae.b_dec, straight.sae.b_dec)
    with pytest.raises(SaegeoError, match="refit.pt"):
        refit_sgd(sae, x, checkpoint=path, **{**settings, "lr": 2e-2})


def test_sgd_errors_name_the_problem():
    sae = random_sae()
    with pytest.raises(SaegeoError, match="tokens"):
        refit_sgd(sae, acts(), tokens=0, device="cpu", progress=False)


@pytest.mark.gpu
def test_gpu_sgd_refit_stays_on_the_gpu():
    sae, x = random_sae(), acts()
    sgd = refit_sgd(sae, x, tokens=10 * N, batch_size=100, device="cuda", progress=False)
    assert sgd.sae.W_dec.device.type == "cuda"
