"""Strip outputs from the notebooks, so that they are stored in git without them.

    python notebooks/strip.py                 # strip every notebooks/*.ipynb in place
    python notebooks/strip.py --check         # exit 1, naming them, if any has outputs
    python notebooks/strip.py path.ipynb ...  # only these

Outputs, execution counts and execution timing metadata are removed; cell tags (such as the
``parameters`` tag of each notebook's first code cell) are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
# Cell metadata that only records one run.
RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    """Whether any code cell of ``nb`` holds outputs, an execution count or run metadata."""
    return "widgets" in nb.metadata or any(
        cell.get("outputs")
        or cell.get("execution_count") is not None
        or any(key in cell.metadata for key in RUN_METADATA)
        for cell in nb.cells
    )


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` without outputs, execution counts and run metadata (changed in place)."""
    for cell in nb.cells:
        for key in RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)  # widget state saved by a live session
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/)")
    parser.add_argument("--check", action="store_true", help="only report notebooks with outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(HERE.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if not has_outputs(nb):
            continue
        dirty.append(path)
        if not args.check:
            nbformat.write(strip(nb), path)
    for path in dirty:
        print(f"{path}: {'has outputs' if args.check else 'stripped'}")  # noqa: T201
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
