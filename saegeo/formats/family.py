"""SAE families: SAEs of one model site at increasing widths."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from saegeo.core.sae import SAE
from saegeo.errors import SaegeoError, ShapeError
from saegeo.formats.sae_files import is_sae_dir, load_sae

PathLike = str | os.PathLike[str]


class Family(Sequence[SAE]):
    """SAEs on the same site sorted by width; ``fam[0]`` is the narrowest.

    Members are SAEs or paths of saved SAEs (read with :func:`saegeo.load_sae`); every function
    that takes a family takes such a list too.

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> fam = Family([SAE.from_decoder(torch.eye(4)), SAE.from_decoder(torch.eye(4)[:2])])
    >>> fam.widths
    [2, 4]
    """

    def __init__(self, saes: Sequence[SAE | PathLike]) -> None:
        if isinstance(saes, (str, os.PathLike)) or not saes:
            raise SaegeoError(
                "a family needs a list of SAEs or SAE paths (Family.load reads a directory)"
                if saes
                else "a family needs at least one SAE"
            )
        ordered = sorted(map(_member, saes), key=lambda sae: sae.width)
        first = ordered[0]
        for sae in ordered[1:]:
            if sae.d_in != first.d_in:
                raise ShapeError(
                    f"{_source(sae)}: d_in={sae.d_in} but {_source(first)} has d_in={first.d_in}; "
                    "a family's SAEs must read the same model site"
                )
        for smaller, larger in zip(ordered[:-1], ordered[1:], strict=True):
            if smaller.width == larger.width:
                raise SaegeoError(
                    f"{_source(larger)}: width {larger.width} is also the width of "
                    f"{_source(smaller)}; a family holds one SAE per width"
                )
        for key in ("model_name", "hook_name"):
            sites = {sae.metadata[key]: sae for sae in ordered if sae.metadata.get(key)}
            if len(sites) > 1:
                (a, sae_a), (b, sae_b) = list(sites.items())[:2]
                raise SaegeoError(
                    f"{_source(sae_b)}: {key} {b!r} but {_source(sae_a)} has {a!r}; a family's "
                    "SAEs must read the same model site"
                )
        self._saes = tuple(ordered)

    @classmethod
    def load(cls, paths: PathLike | Sequence[PathLike]) -> Family:
        """Load SAE directories, a directory of SAE directories, or one Matryoshka SAE.

        A single Matryoshka SAE (``metadata["matryoshka_widths"]``) gives the family of its
        nested prefixes.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise SaegeoError("Family.load() needs at least one path")
        dirs: list[Path] = []
        for path in map(Path, paths):
            if path.is_dir() and not is_sae_dir(path):
                members = sorted(p for p in path.iterdir() if p.is_dir() and is_sae_dir(p))
                if not members:
                    raise SaegeoError(f"{path}: holds no SAE directories")
                dirs.extend(members)
            else:
                dirs.append(path)
        saes = [load_sae(d) for d in dirs]
        if len(saes) == 1 and saes[0].metadata.get("matryoshka_widths"):
            return cls.from_matryoshka(saes[0])
        return cls(saes)

    @classmethod
    def from_pretrained(
        cls,
        release: str,
        sae_ids: Sequence[str] | None = None,
        *,
        site: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Family:
        """SAEs of a published release (see :func:`saegeo.load_pretrained`), sorted by width.

        ``sae_ids=None`` takes the release's SAEs on its only site, or on ``site``
        (``"layer_12"`` for Gemma Scope); a release of several sites without ``site`` is
        refused before anything is fetched, with the sites to choose from. Files come
        through the Hugging Face cache.
        """
        from saegeo.formats.pretrained import family_from_pretrained

        return family_from_pretrained(release, sae_ids, site=site, dtype=dtype)

    @classmethod
    def from_matryoshka(cls, sae: SAE) -> Family:
        """The nested prefixes of a Matryoshka SAE, one member per entry of its widths."""
        widths = sorted({int(w) for w in sae.metadata.get("matryoshka_widths", [])})
        if not widths or widths[-1] > sae.width:
            raise SaegeoError(
                f"{_source(sae)}: matryoshka_widths {widths} do not fit width {sae.width}"
            )
        members = []
        for width in widths:
            prefix = sae.select(range(width))
            members.append(
                prefix.replace(metadata={**prefix.metadata, "name": f"{sae.name}[:{width}]"})
            )
        return cls(members)

    def __len__(self) -> int:
        return len(self._saes)

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            return Family(self._saes[index])
        return self._saes[index]

    def __iter__(self) -> Iterator[SAE]:
        return iter(self._saes)

    def __repr__(self) -> str:
        return f"Family(widths={self.widths}, d_in={self.d_in})"

    @property
    def widths(self) -> list[int]:
        return [sae.width for sae in self._saes]

    @property
    def d_in(self) -> int:
        return self._saes[0].d_in

    @property
    def names(self) -> list[str]:
        return [sae.name for sae in self._saes]

    def pairs(self) -> list[tuple[SAE, SAE]]:
        """Adjacent (smaller, larger) pairs."""
        return list(zip(self._saes[:-1], self._saes[1:], strict=True))


def _member(sae: SAE | PathLike) -> SAE:
    """A family member: an SAE, or the SAE saved at a path."""
    if isinstance(sae, SAE):
        return sae
    if isinstance(sae, (str, os.PathLike)):
        return load_sae(sae)
    raise SaegeoError(f"a family holds SAEs or SAE paths, not {type(sae).__name__} ({sae!r:.60})")


def _source(sae: SAE) -> str:
    return str(sae.metadata.get("source") or sae.name)


def as_family(family: Family | Sequence[SAE]) -> Family:
    """A :class:`Family` as it is, or one made of SAEs given in any sequence.

    Examples
    --------
    >>> import torch
    >>> from saegeo.core.sae import SAE
    >>> saes = [SAE.from_decoder(torch.eye(4)[:2]), SAE.from_decoder(torch.eye(4))]
    >>> fam = as_family(saes)
    >>> as_family(fam) is fam, [sae.width for sae in fam]
    (True, [2, 4])
    """
    return family if isinstance(family, Family) else Family(list(family))
