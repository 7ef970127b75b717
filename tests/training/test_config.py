"""Training configuration: choices and ranges checked when the config is made."""

from __future__ import annotations

import pytest

from saegeo.errors import SaegeoError
from saegeo.training.config import TrainConfig


def test_bad_configs_raise() -> None:
    with pytest.raises(SaegeoError, match="arch"):
        TrainConfig(arch="gated")  # type: ignore[arg-type]
    with pytest.raises(SaegeoError, match="matryoshka_widths"):
        TrainConfig(matryoshka_widths=(8, 4))
