"""The family explorer in Jupyter: an anywidget running the offline site's front end.

The widget holds the site's index (:func:`saegeo.explorer.site_data.index_data`) as a trait;
the page asks for a member's documents when it opens the member and the kernel answers with
the same documents the site writes, so JupyterLab, Notebook 7 and VS Code show exactly what
``saegeo explore`` shows, without a server.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from typing_extensions import Unpack

from saegeo.acts.streaming import ActsLike, StreamOptions, with_stream_options
from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError
from saegeo.explorer.facts import PASSED_OPTIONS, FamilyFacts, as_facts
from saegeo.explorer.site import static_text
from saegeo.explorer.site_data import index_data, member_data, snippet_data
from saegeo.formats.family import Family
from saegeo.runtime.atomic import finite_or_null
from saegeo.trees.dag import Metric


def _document(facts: FamilyFacts, name: str) -> dict[str, Any]:
    """The data document ``name`` (``member-L`` or ``snippets-L``) of ``facts``."""
    kind, _, level = name.partition("-")
    if not level.isdigit() or int(level) >= len(facts.family) or kind not in ("member", "snippets"):
        raise SaegeoError(f"the explorer asked for an unknown document {name!r}")
    build = member_data if kind == "member" else snippet_data
    return finite_or_null(build(facts, int(level)))


@functools.cache
def widget_class() -> type:
    """The widget class, made on first use so that ``import saegeo`` does not load Jupyter's
    widget machinery."""
    try:
        import anywidget
        import traitlets
    except ImportError as exc:
        raise SaegeoError(
            "sg.explore() needs anywidget: pip install anywidget (or saegeo with its dependencies)"
        ) from exc

    class ExplorerWidget(anywidget.AnyWidget):
        """The explorer of one family (build it with :func:`saegeo.explore`)."""

        _esm = static_text("explorer.js")
        _css = static_text("explorer.css")
        index = traitlets.Dict().tag(sync=True)

        def __init__(self, facts: FamilyFacts) -> None:
            super().__init__(index=finite_or_null(index_data(facts)))
            self.facts = facts
            self._documents: dict[str, dict[str, Any]] = {}
            self.on_msg(self._answer)

        def document(self, name: str) -> dict[str, Any]:
            """The document ``name`` (``member-L`` or ``snippets-L``), built once."""
            if name not in self._documents:
                self._documents[name] = _document(self.facts, name)
            return self._documents[name]

        def _answer(self, _widget: Any, content: Any, _buffers: Any) -> None:
            if isinstance(content, dict) and content.get("type") == "load":
                name = str(content.get("name"))
                self.send({"type": "data", "name": name, "doc": self.document(name)})

    return ExplorerWidget


@with_stream_options
def explore(
    family: Family | Sequence[SAE] | FamilyFacts,
    acts: ActsLike | None = None,
    *,
    metric: Metric = "decoder_cosine",
    threshold: float | None = None,
    novelty_threshold: float = 0.7,
    k: int = 10,
    **options: Unpack[StreamOptions],
) -> Any:
    """The family explorer as a Jupyter widget: search, a width selector, a sortable feature
    list and the card of the selected feature, whose parents and children are links.

    Parameters are those of :func:`saegeo.feature_card`; ``family`` may be a
    :class:`~saegeo.explorer.facts.FamilyFacts` already computed.

    Examples
    --------
    >>> import saegeo as sg
    >>> sg.explore(fam, store, metric="decoder_cosine")  # doctest: +SKIP
    """
    widget = widget_class()
    values = locals()
    facts = as_facts(family, acts, **{name: values[name] for name in PASSED_OPTIONS}, **options)
    return widget(facts)
