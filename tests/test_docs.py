"""The documentation: the site builds without a warning, and every repository path, module and
``sg.`` name the prose mentions exists."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import saegeo

ROOT = Path(__file__).resolve().parents[1]

# Top-level folders of the repository: a mention of one of them followed by a path is a
# repository path, and must exist.
REPO_PATH = re.compile(
    r"(?<![\w./~$-])((?:saegeo|docs|assets|analyses|notebooks|tests)/[\w./-]*[\w/])"
)
# A Markdown file named on its own (DESIGN.md, CHANGELOG.md): at the root or under docs/.
MARKDOWN_FILE = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
# A dotted name under saegeo: a module, or an attribute of one. JSON schema identifiers
# (saegeo.feature_tree.v1) are names of formats, not of modules.
DOTTED = re.compile(r"(?<![\w.])(saegeo(?:\.[A-Za-z_]\w*)+)")
SCHEMA_ID = re.compile(r"^saegeo\.\w+\.v\d+$")
# ``sg.name`` in examples and prose: a public name of ``import saegeo as sg``.
SG_NAME = re.compile(r"(?<![\w.])sg\.([A-Za-z_]\w*)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def _documents() -> Iterator[tuple[Path, str]]:
    """Every file a user reads: the package, its docs, the README and changelog, the analyses
    and the notebooks (their cells' sources)."""
    yield from ((p, p.read_text()) for p in (ROOT / "README.md", ROOT / "CHANGELOG.md"))
    for folder, pattern in [("saegeo", "*.py"), ("docs", "*.md"), ("analyses", "*.py")]:
        yield from ((p, p.read_text()) for p in sorted((ROOT / folder).rglob(pattern)))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        yield path, "\n".join("".join(cell["source"]) for cell in cells)
    yield from ((p, p.read_text()) for p in sorted((ROOT / "notebooks").glob("*.py")))


def _resolves(dotted: str) -> bool:
    """Whether ``saegeo.a.b.c`` is a module or an attribute of the longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        with warnings.catch_warnings():  # a deprecated alias is still a name that exists
            warnings.simplefilter("ignore", FutureWarning)
            for name in parts[cut:]:
                if not hasattr(obj, name):
                    return False
                obj = getattr(obj, name)
        return True
    return False


def _missing_references(path: Path, text: str) -> list[str]:
    missing = []
    for ref in REPO_PATH.findall(text):
        ref = ref.rstrip(".")
        if any(c in ref for c in "*{<") or ".." in ref:
            continue
        if not (ROOT / ref).exists() and not (path.parent / ref).exists():
            missing.append(ref)
    for name in MARKDOWN_FILE.findall(text):
        if not any((base / name).exists() for base in (ROOT, ROOT / "docs", path.parent)):
            missing.append(name)
    for dotted in DOTTED.findall(text):
        dotted = dotted.rstrip(".")
        if not SCHEMA_ID.match(dotted) and not _resolves(dotted):
            missing.append(dotted)
    if path.suffix != ".py" or path.is_relative_to(ROOT / "analyses"):
        missing += [f"sg.{n}" for n in SG_NAME.findall(text) if not hasattr(saegeo, n)]
    return missing


def test_every_path_module_and_public_name_the_docs_mention_exists():
    missing = {}
    for path, text in _documents():
        if refs := _missing_references(path, text):
            missing[str(path.relative_to(ROOT))] = sorted(set(refs))
    assert not missing, f"references to things that are not in the repository: {missing}"


def test_the_reference_check_catches_what_it_should(tmp_path):
    page = tmp_path / "page.md"
    text = (
        "See `saegeo/feature_tree.v1.schema.json`, `saegeo.toy`, DESIGN.md, `sg.no_such_name`"
        " and `saegeo.trees.dag.no_such_function`; but `saegeo/trees/dag.py`, README.md, "
        "`saegeo.feature_tree.v1`, `saegeo.trees.dag.feature_dag` and `sg.classify` exist."
    )
    assert sorted(_missing_references(page, text)) == [
        "DESIGN.md",
        "saegeo.toy",
        "saegeo.trees.dag.no_such_function",
        "saegeo/feature_tree.v1.schema.json",
        "sg.no_such_name",
    ]


def test_every_python_example_in_the_docs_is_valid_python():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for n, block in enumerate(PYTHON_BLOCK.findall(page.read_text())):
            compile(block, f"{page.relative_to(ROOT)} (example {n + 1})", "exec")


def test_the_api_reference_documents_every_public_name_once():
    entries = re.findall(r"^::: saegeo\.(\w+)$", (ROOT / "docs" / "reference.md").read_text(), re.M)
    assert sorted(entries) == sorted(saegeo.__all__)


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_no_public_name_or_page_speaks_of_numbered_seeds():
    """The research write-ups are cited by name, never by a number a reader takes for an RNG
    seed; the former ``seed_003_*`` names live on only as deprecated aliases."""
    aliases = {"seed_003_table", "seed_003_comparison", "SEED_003_FIRST_PAIR"}
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path, text in _documents()
        for match in re.finditer(r"\w*seed[ _]?00\d\w*", text, flags=re.IGNORECASE)
        if match.group(0) not in aliases
    ]
    assert not found, found


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is a dev/test dependency"
)
def test_the_documentation_site_builds_without_warnings(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
        + ["-d", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert done.returncode == 0 and not warnings, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count("doc-heading") > 50
