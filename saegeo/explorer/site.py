"""The explorer as a static site: ``index.html`` and one pair of data scripts per member.

The page inlines the explorer's front end (``static/explorer.js`` and ``.css``, the same code
the Jupyter widget runs) and loads a member's documents (:mod:`saegeo.explorer.site_data`)
only when the member is opened, as ``<script>`` tags that hand them to
``window.saegeoData`` — so the page works from ``file://`` (where browsers refuse ``fetch``
and module scripts from files) as well as from any web server. ``explorer.json`` holds the
index and marks the directory as a saegeo explorer site.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from saegeo.acts.streaming import progress_bar
from saegeo.explorer.facts import FamilyFacts
from saegeo.explorer.site_data import SCHEMA, index_data, member_data, snippet_data
from saegeo.runtime.atomic import finite_or_null
from saegeo.runtime.outputs import EXPLORER_DATA_DIR as DATA_DIR
from saegeo.runtime.outputs import GENERATOR_META

INDEX_FILE = "explorer.json"
"""The index, beside ``index.html``: how saegeo recognises the site as its own."""


def static_text(name: str) -> str:
    """A file of the front end (``explorer.js``, ``explorer.css``)."""
    return resources.files("saegeo.explorer").joinpath("static", name).read_text(encoding="utf-8")


def script_json(doc: Any) -> str:
    """``doc`` as JSON that can sit inside a ``<script>`` element (no ``</``, no NaN)."""
    return json.dumps(finite_or_null(doc), allow_nan=False, separators=(",", ":")).replace(
        "</", "<\\/"
    )


def page_html(index: dict[str, Any], *, title: str = "saegeo explorer") -> str:
    """The site's ``index.html``: the front end inlined, the index embedded."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{GENERATOR_META}
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>html,body{{margin:0;height:100%}}#app{{height:100vh}}
{static_text("explorer.css")}</style>
</head>
<body>
<div id="app"></div>
<script id="sg-index" type="application/json">{script_json(index)}</script>
<script type="module">
{static_text("explorer.js")}
const index = JSON.parse(document.getElementById("sg-index").textContent);
window.saegeoExplorer = mount(document.getElementById("app"), index, scriptLoader("data"));
</script>
</body>
</html>
"""


def data_script(name: str, doc: Any) -> str:
    """A data document as the script the page loads: ``window.saegeoData(name, doc)``."""
    return f"window.saegeoData({json.dumps(name)},{script_json(doc)});\n"


def write_site(
    facts: FamilyFacts,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write the explorer site of ``facts`` to the directory ``out``; returns ``out``.

    The site appears complete or not at all. ``out`` must be new or an empty directory; with
    ``overwrite=True`` it may also hold a previous explorer site, which is replaced once the new
    one is complete. Nothing else is replaced (:mod:`saegeo.runtime.claim`).
    """
    from saegeo.runtime.claim import claim_output
    from saegeo.runtime.outputs import Output

    with claim_output(Output.named(out, "explore", "out"), force=overwrite) as claim:
        write_site_files(facts, claim.path, progress=progress)
        claim.commit()
    return Path(out)


def write_site_files(
    facts: FamilyFacts, directory: str | os.PathLike[str], *, progress: bool | None = None
) -> None:
    """Write the site's files into ``directory`` (made if missing): ``index.html``, its
    ``explorer.json`` and one data script per member under ``data/``."""
    directory = Path(directory)
    index = index_data(facts)
    levels = range(len(facts.family))
    data = directory / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    with progress_bar(2 * len(levels), "explorer data", progress) as bar:
        for level in levels:
            for name, doc in (
                (f"member-{level}", member_data(facts, level)),
                (f"snippets-{level}", snippet_data(facts, level)),
            ):
                (data / f"{name}.js").write_text(data_script(name, doc), encoding="utf-8")
                bar.update()
    (directory / INDEX_FILE).write_text(json.dumps(finite_or_null(index), indent=1) + "\n")
    (directory / "index.html").write_text(page_html(index), encoding="utf-8")


__all__ = ["INDEX_FILE", "SCHEMA", "page_html", "write_site", "write_site_files"]
