"""The package docstring: its shape-suffix legend covers every suffix the code uses."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import saegeo

# Names whose capital after the underscore is a name, not an axis (the gradient of ``W``).
# Names that end in capitals without being shape suffixes: a gradient, TransformerLens's
# parameter names, a folder pattern.
NOT_SUFFIXES = {"grad_W", "b_O", "width_W"}
SUFFIX = re.compile(r"\b[a-z][a-zA-Z0-9]*_([A-Z1]{1,4})\b")


def _legend_letters() -> set[str]:
    return set(re.findall(r"^([A-Z1])\s{2,}\S", saegeo.__doc__ or "", flags=re.MULTILINE))


def test_legend_covers_every_suffix():
    used: dict[str, str] = {}
    for path in Path(saegeo.__file__).parent.rglob("*.py"):
        for match in SUFFIX.finditer(path.read_text()):
            if match.group(0) not in NOT_SUFFIXES:
                for letter in match.group(1):
                    used.setdefault(letter, f"{path.name}: {match.group(0)}")
    legend = _legend_letters()
    assert {"B", "D", "F", "K", "S", "L", "P", "C"} <= legend
    missing = {letter: where for letter, where in used.items() if letter not in legend}
    assert not missing, f"suffix letters without a legend entry: {missing}"


def test_public_names_resolve_lazily_to_the_typing_imports():
    """Each public name is what its ``TYPE_CHECKING`` import in ``saegeo/__init__.py`` names,
    loaded on first use, and nothing else is public."""
    assert len(saegeo.__all__) > 50
    for name in saegeo.__all__:
        module = importlib.import_module(saegeo._MODULE_OF[name])
        assert getattr(saegeo, name) is getattr(module, name), name
    assert set(saegeo.__all__) <= set(dir(saegeo))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        saegeo.nothing  # noqa: B018


def test_help_loads_no_torch():
    """``import saegeo`` and ``saegeo --help`` answer without importing torch (seconds)."""
    import subprocess
    import sys

    code = (
        "import sys, saegeo, saegeo.cli; from saegeo.cli import main; "
        "assert main(['--help']) == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
