"""The demo's stage cache: each stage's outputs are kept while the key that made them holds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from saegeo.acts.store import META_FILE
from saegeo.demo.settings import (
    HARVEST_SETTINGS,
    NOVELTY_POINTS,
    NOVELTY_TOKENS,
    SHIPPED_FAMILY,
    SHIPPED_RELU_FAMILY,
    STITCH_TOKENS,
    TRAIN_SETTINGS,
    TREE_COUNT,
    TREE_MIN_SIZE,
    DemoSettings,
)
from saegeo.runtime.atomic import write_json

STAGES_FILE = "stages.json"
"""Under the demo root: the key each stage's outputs were made with, and whether complete."""


def stage_key(settings: dict[str, Any], *inputs: str) -> str:
    """A short hash of a stage's ``settings`` and the keys of the stages it reads.

    Examples
    --------
    >>> stage_key({"k": 32}) == stage_key({"k": 32})
    True
    >>> stage_key({"k": 32}) == stage_key({"k": 16})
    False
    >>> stage_key({"k": 32}, "a") == stage_key({"k": 32}, "b")
    False
    """
    blob = json.dumps({"settings": settings, "inputs": list(inputs)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_keys(settings: DemoSettings, n_eval: int | None = None) -> dict[str, str]:
    """The key of every demo stage under ``settings``.

    ``acts`` and ``family`` always; the report's sections (``family_table``, ``novelty``,
    ``trees``, ``frankenstein`` and, for the shipped family, ``architectures``) too when
    ``n_eval`` (the held-out tokens) is given.
    """
    values = settings.as_dict()
    acts = stage_key({k: values[k] for k in HARVEST_SETTINGS})
    if settings.retrain:
        family = stage_key({k: values[k] for k in TRAIN_SETTINGS}, acts)
    else:  # a new shipped family is a new family
        family = _shipped_key(SHIPPED_FAMILY)
    keys = {"acts": acts, "family": family}
    if n_eval is not None:
        keys["family_table"] = stage_key({}, family)
        novelty = {
            "n_eval": n_eval,
            "sample": NOVELTY_TOKENS,
            "points": NOVELTY_POINTS,
            "scores": ["delta_mse", "explained", "residual"],
        }
        keys["novelty"] = stage_key(novelty, acts, family)
        if not settings.retrain:
            keys["architectures"] = stage_key(
                novelty | {"points": 0, "gain": "least squares"},
                acts,
                _shipped_key(SHIPPED_RELU_FAMILY),
            )
        keys["trees"] = stage_key(
            {
                "rank_by": "split",
                "ranking": "best-parent children, hubs last",
                "labels": "top tokens",
                "node_stats": ["freq", "max_act"],
                "min_size": TREE_MIN_SIZE,
                "top": TREE_COUNT,
            },
            acts,
            family,
        )
        keys["frankenstein"] = stage_key({"n_eval": n_eval, "fit": STITCH_TOKENS}, acts, family)
    return keys


def _shipped_key(family_dir: Path) -> str:
    """The key of a shipped family: its ``family.json`` changes whenever it is remade."""
    return stage_key(
        {"shipped": hashlib.sha256((family_dir / "family.json").read_bytes()).hexdigest()}
    )


class Stages:
    """The record of which key made each stage's outputs under a demo root.

    A stage is ready when its recorded key equals the current one, it was marked done and its
    outputs exist. Otherwise :meth:`ready` removes outputs made with another key, records the
    current key as in progress (so an interrupted harvest resumes with the same settings) and
    returns False; the caller builds the stage and calls :meth:`done`.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / STAGES_FILE
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                loaded = {}
            if isinstance(loaded, dict):
                self.records = {k: v for k, v in loaded.items() if isinstance(v, dict)}

    def ready(self, name: str, key: str, paths: list[Path]) -> bool:
        record = self.records.get(name, {})
        if record.get("key") == key:
            if record.get("done") and all(p.exists() for p in paths):
                return True
            if not record.get("done"):
                return False
        for path in paths:
            remove(path)
        self.records[name] = {"key": key, "done": False}
        write_json(self.path, self.records)
        return False

    def done(self, name: str) -> None:
        self.records[name]["done"] = True
        write_json(self.path, self.records)

    def adopt_legacy(self, settings: DemoSettings, keys: dict[str, str]) -> None:
        """Keep the acts and family of a cache made before stage keys (``settings.json`` only)
        where they were made with the current settings and are complete."""
        legacy = self.path.parent / "settings.json"
        if self.records or not legacy.exists():
            return
        try:
            previous = json.loads(legacy.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        current = settings.as_dict()
        if not isinstance(previous, dict) or any(
            previous.get(k) != current[k] for k in HARVEST_SETTINGS
        ):
            return
        root = self.path.parent
        if store_complete(root / "acts", settings.tokens):
            self.records["acts"] = {"key": keys["acts"], "done": True}
            family_json = root / "family" / "family.json"
            if previous == current and family_json.exists():
                members = json.loads(family_json.read_text()).get("members", [])
                if len(members) == len(settings.multipliers):
                    self.records["family"] = {"key": keys["family"], "done": True}
            write_json(self.path, self.records)


def store_complete(path: Path, tokens: int) -> bool:
    meta_path = path / META_FILE
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    return int(meta.get("n_tokens", 0)) >= tokens


def remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
