"""The demo's activations and family, built on first use and cached."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from saegeo.acts.store import ActivationStore
from saegeo.demo.settings import DEFAULT_ROOT, SHIPPED_FAMILY, DemoSettings, check_shipped_site
from saegeo.demo.stages import Stages, remove, stage_keys, store_complete
from saegeo.formats.family import Family
from saegeo.runtime.atomic import write_json
from saegeo.runtime.outputs import Output, check_existing

log = logging.getLogger(__name__)


class DemoData(NamedTuple):
    """The demo's activations and family."""

    store: ActivationStore
    """Harvested activations (with token ids and document ids per token)."""
    family: Family
    """The shipped SAEs, or with ``retrain`` SAEs trained on ``store``; narrowest first."""
    root: Path
    """The cache directory: ``acts/`` (and with ``retrain``, ``family/``) live here."""
    settings: DemoSettings
    """What was harvested and trained."""
    family_dir: Path
    """Where the family was loaded from: :data:`SHIPPED_FAMILY` or ``root/family``."""


def demo_data(
    root: str | Path = DEFAULT_ROOT,
    settings: DemoSettings | None = None,
    *,
    progress: bool | None = None,
) -> DemoData:
    """The demo's activations and family under ``root``, built on first use.

    ``root/acts`` is the activation store (resumed if a harvest was interrupted). The family
    is the shipped one (:data:`SHIPPED_FAMILY`) unless ``settings.retrain``; then
    ``root/family`` holds SAEs trained here, with ``family.json``. Each is a stage keyed by the
    settings that produced it and by its inputs' keys (see :class:`Stages`): it is rebuilt
    when that key changes, and only then.
    """
    from saegeo.lm.harvest import harvest
    from saegeo.training.trainer import TrainConfig, train_family

    settings = settings or DemoSettings()
    if not settings.retrain:
        check_shipped_site(settings)
    check_existing(Output.named(root, "demo", "root"), force=False)  # new, or the demo's own
    root = Path(root)
    store_dir, family_dir = root / "acts", root / "family"
    keys = stage_keys(settings)
    root.mkdir(parents=True, exist_ok=True)
    stages = Stages(root)
    stages.adopt_legacy(settings, keys)
    write_json(root / "settings.json", settings.as_dict())

    if stages.ready("acts", keys["acts"], [store_dir]) and store_complete(
        store_dir, settings.tokens
    ):
        store = ActivationStore.open(store_dir)
    else:
        log.info("harvesting %d tokens from %s", settings.tokens, settings.model)
        store = harvest(
            settings.model,
            None,
            store_dir,
            layer=settings.layer,
            context=settings.context,
            skip_first=settings.skip_first,
            max_tokens=settings.tokens,
            progress=progress,
        )
        stages.done("acts")
    if not settings.retrain:
        remove(family_dir)  # a family trained here earlier, on other activations
        family = Family.load(SHIPPED_FAMILY)
        return DemoData(store, family, root, settings, SHIPPED_FAMILY)
    if stages.ready("family", keys["family"], [family_dir]):
        family = Family.load(family_dir)
    else:
        # A family made with other settings (train_family writes one whole or not at all).
        remove(family_dir)
        config = TrainConfig(
            arch=settings.arch,
            k=settings.k,
            tokens=settings.train_tokens,
            seed=settings.seed,
            progress=progress,
        )
        widths = [m * store.d_in for m in settings.multipliers]
        log.info("training %s family of widths %s", settings.arch, widths)
        family = train_family(store, widths, config, out_dir=family_dir).family
        stages.done("family")
    return DemoData(store, family, root, settings, family_dir)
