"""The explorer in a real browser: Chromium driven by Playwright, on the site and the widget.

A test searches a feature by its text, opens it, follows a child and a parent, and checks that
the numbers on the page are the Python API's, with no console errors. Playwright's own browser
downloads are not used: the tests drive the system's Chromium (``make test`` installs it).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest

import saegeo as sg
from saegeo.explorer.site import script_json, static_text, write_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make test installs it)")
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def site(facts, tmp_path_factory):
    return write_site(facts, tmp_path_factory.mktemp("explore") / "site")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert errors == []


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def check_card(page, card: sg.FeatureCard) -> None:
    """The open card is ``card``'s feature and shows its numbers."""
    shown = page.locator("[data-testid=feature-card]")
    sync_api.expect(shown).to_have_attribute("data-feature", card.id)
    for key in ("freq", "max_act", "mean_act", "delta_mse", "explained", "max_cos"):
        value = shown.locator(f"dd[data-key={key}]").get_attribute("data-value")
        expected = getattr(card, key)
        if expected is None:
            assert value == ""
        else:
            assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert shown.locator("dd[data-key=kind]").get_attribute("data-value") == (card.kind or "")
    parents = shown.locator("[data-testid=parents] [data-feature]")
    assert parents.evaluate_all("els => els.map(e => e.dataset.feature)") == [
        e["id"] for e in card.parents
    ]
    children = shown.locator("[data-testid=children] [data-feature]")
    assert children.evaluate_all("els => els.map(e => e.dataset.feature)") == [
        e["id"] for e in card.children
    ]
    snippets = shown.locator("[data-testid=snippet]")
    assert snippets.count() == len(card.snippets)
    for shown_snippet, snippet in zip(snippets.all(), card.snippets, strict=True):
        tokens = shown_snippet.evaluate("el => [...el.children].slice(1).map(c => c.textContent)")
        assert tokens == [t.replace("\n", "⏎") for t in snippet["tokens"]]
        assert float(shown_snippet.get_attribute("data-value")) == pytest.approx(
            snippet["activation"], rel=1e-5
        )


def walk(page, facts) -> None:
    """Search a level-1 feature by its text, open it, follow a child, then a parent."""
    target = next(
        f"1/{j}"
        for j in range(facts.family.widths[1])
        if facts.dag.in_degree((1, j)) and facts.dag.out_degree((1, j))
    )
    card = sg.feature_card(facts, target)
    text = "".join(card.snippets[0]["tokens"]).strip()
    page.wait_for_selector('[data-feature="0/0"]')
    page.select_option("[data-testid=level]", "1")
    page.fill("[data-testid=search]", text)
    row = page.locator(f'.sg-row[data-feature="{target}"]')
    row.click()
    check_card(page, card)

    child = card.children[0]["id"]
    page.locator(f'[data-testid=children] [data-feature="{child}"]').click()
    child_card = sg.feature_card(facts, child)
    check_card(page, child_card)

    parent = child_card.parents[0]["id"]
    page.locator(f'[data-testid=parents] [data-feature="{parent}"]').click()
    check_card(page, sg.feature_card(facts, parent))


def test_site_from_file(page, site, facts):
    page.goto((Path(site) / "index.html").as_uri())
    walk(page, facts)


def test_site_from_http_server(page, server, facts):
    page.goto(f"{server}/index.html")
    walk(page, facts)


def test_text_and_regex_search_match_python(page, site, facts):
    page.goto((Path(site) / "index.html").as_uri())
    page.wait_for_selector('[data-feature="0/0"]')
    page.select_option("[data-testid=level]", "2")
    for query, match in (
        ("rain", lambda t: "rain" in t.lower()),
        ("/cat (sat|ran)/", lambda t: re.search("cat (sat|ran)", t) is not None),
    ):
        expected = [
            j
            for j in range(facts.family.widths[2])
            if match(facts.features[2].at[j, "label"])
            or any(match("".join(s["tokens"])) for s in facts.snippets(2, j))
        ]
        page.fill("[data-testid=search]", query)
        sync_api.expect(page.locator(".sg-count")).to_have_text(
            f"{len(expected)} of {facts.family.widths[2]}"
        )
    page.fill("[data-testid=search]", "2/7")
    page.press("[data-testid=search]", "Enter")
    sync_api.expect(page.locator("[data-testid=feature-card]")).to_have_attribute(
        "data-feature", "2/7"
    )


def test_widget_front_end(page, facts, tmp_path):
    """The widget's render() against the widget's own answers, through a stand-in model."""
    widget = sg.explore(facts)
    page.expose_function("answer", lambda name: widget.document(name))
    page.set_content(
        f"""<html><head><style>{static_text("explorer.css")}</style></head><body><div id=w></div>
<script id=ix type="application/json">{script_json(widget.index)}</script>
<script type="module">
{static_text("explorer.js")}
const listeners = [];
const model = {{
  get: (key) => key === "index" ? JSON.parse(document.getElementById("ix").textContent) : null,
  on: (event, callback) => listeners.push(callback),
  send: async (msg) => {{
    const doc = await window.answer(msg.name);
    for (const callback of listeners) callback({{type: "data", name: msg.name, doc}});
  }},
}};
render({{model, el: document.getElementById("w")}});
</script></body></html>"""
    )
    walk(page, facts)
