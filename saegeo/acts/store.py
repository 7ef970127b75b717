"""Activation stores: model activations [N, d_in] read in bounded-memory batches.

Three layouts open with :meth:`ActivationStore.open`:

- a ``.npy`` file [N, d_in] (memory-mapped);
- a ``.safetensors`` file holding a tensor named ``acts`` [N, d_in] (read by slices);
- a store directory: ``meta.json`` plus shard files ``shard_00000.safetensors``, ... each
  holding ``acts`` [n, d_in] and, optionally, ``token_ids`` [n] (int32) and ``doc_ids`` [n].

``meta.json`` (``"format": "saegeo.activations.v1"``) lists the shards in order with their
token counts, ``d_in`` and ``dtype``, and whatever the producer records (model, layer, text
source, tokenizer). :class:`ShardWriter` writes that layout one complete shard at a time, so
an interrupted harvest keeps every shard already written; the ranks of a ``torch.distributed``
process group can write one store together (``collective=True``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saegeo.config import check_choice
from saegeo.core.finite import finite_row_mask
from saegeo.errors import FormatError, SaegeoError
from saegeo.formats import fields
from saegeo.formats.reading import Config, read_json_object
from saegeo.runtime import distributed
from saegeo.runtime.atomic import atomic_file, write_json
from saegeo.runtime.outputs import STORE_FORMAT
from saegeo.runtime.paths import regular_file

META_FILE = "meta.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NonFinite = Literal["error", "skip"]
REAL_SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8"}


class ActivationStore:
    """Read-only access to N activation vectors of dimension d_in, in batches.

    Examples
    --------
    >>> import torch
    >>> store = ActivationStore.from_tensor(torch.ones(10, 4))
    >>> [b.shape[0] for b in store.iter_batches(batch_size=4)]
    [4, 4, 2]
    """

    def __init__(
        self,
        parts: list[tuple[Any, int, int]],
        d_in: int,
        *,
        meta: dict[str, Any] | None = None,
        source: str = "<memory>",
    ) -> None:
        # parts: (reader, first row, n rows); a reader is an array-like or a shard path.
        self._parts = parts
        self.d_in = int(d_in)
        self.meta = dict(meta or {})
        self.source = source
        self.nonfinite: NonFinite = "error"
        """What reading a row holding NaN or Inf does: ``"error"`` raises
        :class:`NonFiniteError` naming the file and row, ``"skip"`` drops the row (counted in
        :attr:`skipped_rows`)."""
        self._skipped: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, nonfinite: NonFinite = "error"
    ) -> ActivationStore:
        """Open a ``.npy`` file, a ``.safetensors`` file or a store directory.

        ``nonfinite`` sets :attr:`nonfinite`: what reading a row with NaN or Inf values does.
        """
        check_choice("nonfinite", nonfinite, get_args(NonFinite))
        store = cls._open(Path(path))
        store.nonfinite = nonfinite
        return store

    @classmethod
    def _open(cls, path: Path) -> ActivationStore:
        if not path.exists():
            raise SaegeoError(
                f"{path}: no such file or directory; pass activations as .npy, "
                ".safetensors (tensor 'acts') or a store directory with meta.json"
            )
        if path.is_dir():
            return cls._open_dir(path)
        regular_file(path, what="activations file")
        if path.suffix == ".npy":
            try:
                array = np.load(path, mmap_mode="r")
            except (ValueError, OSError, EOFError) as exc:
                raise FormatError(f"{path}: not a readable .npy file ({exc or 'empty'})") from None
            if array.ndim != 2:
                raise FormatError(f"{path}: activations must be 2-D [N, d_in], got {array.shape}")
            if array.dtype.kind not in "fiu":
                raise FormatError(
                    f"{path}: activations must be real numbers, got dtype {array.dtype}"
                )
            return cls(
                [(array, 0, array.shape[0])],
                array.shape[1],
                source=str(path),
                meta={"dtype": str(array.dtype)},
            )
        if path.suffix == ".safetensors":
            n, d_in = _safetensors_shape(path)
            return cls([(path, 0, n)], d_in, source=str(path))
        raise SaegeoError(
            f"{path}: unknown activation format; use .npy, .safetensors or a "
            "store directory with meta.json"
        )

    @classmethod
    def _open_dir(cls, path: Path) -> ActivationStore:
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise SaegeoError(f"{path}: not an activation store (no {META_FILE})")
        meta = read_store_meta(meta_path)
        shards = [(path / s["file"], 0, s["n_tokens"]) for s in meta["shards"]]
        d_in = meta["d_in"]
        for shard, _, n in shards:
            if not shard.exists():
                raise FormatError(f"{shard}: shard listed in {meta_path} is missing")
            regular_file(shard, what="shard")
            rows, shard_d_in = _safetensors_shape(shard)
            if (rows, shard_d_in) != (n, d_in):
                raise FormatError(
                    f"{shard}: holds [{rows}, {shard_d_in}] activations but {meta_path} "
                    f"declares [{n}, {d_in}]; the store is damaged, harvest it again"
                )
        declared = meta.get("n_tokens")
        total = sum(n for _, _, n in shards)
        if declared is not None and declared != total:
            raise FormatError(
                f"{meta_path}: n_tokens is {declared} but the shards hold {total} tokens; "
                "the store is damaged, harvest it again"
            )
        return cls(shards, d_in, meta=meta, source=str(path))

    @classmethod
    def from_tensor(cls, acts: torch.Tensor | np.ndarray) -> ActivationStore:
        """Wrap an in-memory [N, d_in] tensor or array."""
        tensor = torch.as_tensor(acts)
        if tensor.ndim != 2:
            raise SaegeoError(f"activations must be 2-D [N, d_in], got shape {tuple(tensor.shape)}")
        return cls([(tensor, 0, tensor.shape[0])], tensor.shape[1])

    # ------------------------------------------------------------------ reading

    @property
    def n_tokens(self) -> int:
        return sum(n for _, _, n in self._parts)

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"ActivationStore({self.source!r}, n_tokens={self.n_tokens}, d_in={self.d_in})"

    def iter_batches(
        self,
        batch_size: int = 4096,
        *,
        limit: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Iterator[torch.Tensor]:
        """Yield consecutive batches [<= batch_size, d_in], at most ``limit`` rows in all."""
        remaining = self.n_tokens if limit is None else min(limit, self.n_tokens)
        for reader, first, n in self._parts:
            for start in range(0, n, batch_size):
                if remaining <= 0:
                    return
                stop = min(start + batch_size, n, start + remaining)
                batch = self._read(reader, first + start, first + stop)
                remaining -= stop - start
                name = str(reader) if isinstance(reader, Path) else self.source.split("[")[0]
                batch, dropped = finite_rows(
                    batch, source=name, first_row=first + start, skip=self.nonfinite == "skip"
                )
                self._skipped.update((name, row) for row in dropped)
                yield batch.to(device=device, dtype=dtype)

    __iter__ = iter_batches

    def read(self, limit: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All activations (or the first ``limit``) as one tensor: for small stores only."""
        batches = list(self.iter_batches(limit=limit, dtype=dtype))
        return torch.cat(batches) if batches else torch.empty(0, self.d_in, dtype=dtype)

    def slice(self, start: int, stop: int | None = None) -> ActivationStore:
        """A view of rows ``start:stop`` (no data is read or copied)."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        if not 0 <= start <= stop:
            raise SaegeoError(f"{self.source}: bad row range {start}:{stop}")
        parts, offset = [], 0
        for reader, first, n in self._parts:
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                parts.append((reader, first + lo, hi - lo))
            offset += n
        view = ActivationStore(
            parts, self.d_in, meta=self.meta, source=f"{self.source}[{start}:{stop}]"
        )
        view.nonfinite, view._skipped = self.nonfinite, self._skipped
        return view

    @property
    def skipped_rows(self) -> int:
        """Rows dropped so far for holding NaN or Inf values (with ``nonfinite="skip"``), each
        counted once however often it was read; shared with this store's slices."""
        return len(self._skipped)

    def per_token(self, key: str) -> np.ndarray | None:
        """A per-token array [N] saved beside the activations (``token_ids``, ``doc_ids``), or
        None where the store has none."""
        arrays = [self._read(reader, first, first + n, key=key) for reader, first, n in self._parts]
        if any(a is None for a in arrays):
            return None
        return np.concatenate([a.numpy() for a in arrays]) if arrays else np.empty(0)

    def token_ids(self) -> np.ndarray | None:
        """Token ids [N] where the producer saved them (store directories), else None."""
        return self.per_token("token_ids")

    def doc_ids(self) -> np.ndarray | None:
        """Document ids [N] where the producer saved them, else None."""
        return self.per_token("doc_ids")

    def _read(self, reader: Any, start: int, stop: int, key: str = "acts") -> Any:
        if isinstance(reader, Path):
            try:
                with safe_open(str(reader), framework="pt") as f:
                    if key not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                        if key == "acts":
                            raise FormatError(f"{reader}: no tensor named 'acts'")
                        return None
                    return f.get_slice(key)[start:stop]
            except FormatError:
                raise
            except Exception as exc:  # safetensors raises several types for damaged files
                raise FormatError(f"{reader}: unreadable safetensors file ({exc})") from None
        if key != "acts":
            return None
        chunk = reader[start:stop]
        return torch.as_tensor(np.array(chunk)) if isinstance(chunk, np.ndarray) else chunk


class NonFiniteError(FormatError):
    """A row of activations holds NaN or Inf values."""

    def __init__(self, source: str, row: int) -> None:
        self.source, self.row = source, row
        super().__init__(self.message("pass nonfinite='skip' to drop such rows"))

    def message(self, remedy: str) -> str:
        """The one-line error, ending with ``remedy`` (in the terms of the caller's interface)."""
        return f"{self.source}: row {self.row} holds NaN or Inf values; clean it, or {remedy}"


def finite_rows(
    batch_BD: torch.Tensor, *, source: str, first_row: int, skip: bool
) -> tuple[torch.Tensor, list[int]]:
    """The rows of ``batch_BD`` whose values are all finite, and the rows left out.

    Parameters
    ----------
    batch_BD
        A batch of activations.
    source
        The file the batch was read from, for the error message.
    first_row
        The batch's first row in ``source``; rows are reported in ``source``'s numbering.
    skip
        Drop non-finite rows instead of raising.

    Raises
    ------
    NonFiniteError
        A row holds NaN or Inf and ``skip`` is False.

    Examples
    --------
    >>> x = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [3.0, 4.0]])
    >>> kept, dropped = finite_rows(x, source="acts.npy", first_row=10, skip=True)
    >>> kept.tolist(), dropped
    ([[1.0, 2.0], [3.0, 4.0]], [11])
    >>> finite_rows(x, source="acts.npy", first_row=10, skip=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    saegeo.acts.store.NonFiniteError: acts.npy: row 11 holds NaN or Inf values; clean it, ...
    """
    if not batch_BD.is_floating_point():
        return batch_BD, []
    finite_B = finite_row_mask(batch_BD)
    if bool(finite_B.all()):
        return batch_BD, []
    bad = [first_row + int(i) for i in (~finite_B).nonzero().ravel()]
    if not skip:
        raise NonFiniteError(source, bad[0])
    return batch_BD[finite_B], bad


def read_store_meta(meta_path: Path) -> dict[str, Any]:
    """A store's ``meta.json`` with ``d_in``, ``n_tokens`` and every shard's ``file`` and
    ``n_tokens`` checked (a FormatError naming the file and field otherwise)."""
    meta = read_json_object(meta_path, what=META_FILE)
    cfg = Config(meta, meta_path)
    meta["d_in"] = cfg.integer("d_in", minimum=1)
    meta["n_tokens"] = cfg.integer("n_tokens", None, minimum=0)
    shards = cfg.get("shards")
    if not isinstance(shards, list):
        raise fields.bad_field(meta_path, "shards", "a list of shard entries", shards)
    for i, shard in enumerate(shards):
        where = f"{meta_path} (shards[{i}])"
        if not isinstance(shard, dict):
            raise FormatError(f"{where}: expected a JSON object with file and n_tokens")
        entry = Config(shard, where)
        name = entry.string("file")
        if Path(name).name != name or name in ("", ".", ".."):
            raise FormatError(f"{where}: file must be a file name inside the store, got {name!r}")
        shard["n_tokens"] = entry.integer("n_tokens", minimum=0)
    return meta


def _safetensors_shape(path: Path) -> tuple[int, int]:
    try:
        with safe_open(str(path), framework="pt") as f:
            if "acts" not in f.keys():  # noqa: SIM118
                raise FormatError(f"{path}: no tensor named 'acts' (found {list(f.keys())})")
            acts = f.get_slice("acts")
            shape, dtype = acts.get_shape(), acts.get_dtype()
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{path}: unreadable safetensors file ({exc})") from None
    if len(shape) != 2:
        raise FormatError(f"{path}: 'acts' must be 2-D [N, d_in], got {shape}")
    if dtype not in REAL_SAFETENSORS_DTYPES:
        raise FormatError(f"{path}: 'acts' must hold real numbers, got dtype {dtype}")
    return int(shape[0]), int(shape[1])


def as_store(
    acts: ActivationStore | torch.Tensor | np.ndarray | str | os.PathLike[str],
) -> ActivationStore:
    """Anything saegeo accepts as activations, as an ActivationStore."""
    if isinstance(acts, ActivationStore):
        return acts
    if isinstance(acts, (str, os.PathLike)):
        return ActivationStore.open(acts)
    return ActivationStore.from_tensor(acts)


class ShardWriter:
    """Append activations to a store directory, one complete shard at a time.

    Re-opening a directory resumes it: the shards listed in its ``meta.json`` are kept and
    ``n_tokens`` says how many tokens they hold, so a producer can skip that much input. A new
    directory gets its ``meta.json`` (no shards yet) at once, so a producer interrupted before
    its first shard is complete resumes too. ``shard_info`` is recorded in the ``meta.json``
    entry of every shard written next (how a producer made it, where that may change between
    resumed runs).

    With ``collective=True`` under a ``torch.distributed`` process group of ``W`` ranks, every
    rank opens the same directory (on a file system they all see) and the ranks write the
    new rows together: cut into shards of ``shard_tokens`` rows, shard ``j`` is rank
    ``j % W``'s (:meth:`owned`), and each rank adds the rows of its own shards, in order. Each
    rank writes its shard files; after each round of ``W`` shards, rank 0 alone lists them in
    ``meta.json``, in the order of their rows. So the store has the shards, file names and
    ``meta.json`` that one process adding every row would write, and an interrupted run
    resumes after its last complete round. Every rank calls :meth:`add` and :meth:`close`
    (they exchange each round's shards); without a process group ``collective`` changes
    nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        d_in: int,
        *,
        dtype: str = "float32",
        shard_tokens: int = 65536,
        meta: dict[str, Any] | None = None,
        collective: bool = False,
    ) -> None:
        check_choice("dtype", dtype, sorted(DTYPES))
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.shard_tokens = shard_tokens
        meta_path = self.path / META_FILE
        if meta_path.exists():
            self.meta = read_store_meta(meta_path)
            if self.meta["d_in"] != d_in or self.meta["dtype"] != dtype:
                raise SaegeoError(
                    f"{self.path}: existing store has d_in={self.meta['d_in']}, "
                    f"dtype={self.meta['dtype']}; cannot resume with d_in={d_in}, dtype={dtype}"
                )
        else:
            self.meta = {
                "format": STORE_FORMAT,
                "d_in": d_in,
                "dtype": dtype,
                "n_tokens": 0,
                "shards": [],
                **(meta or {}),
            }
        self._collective = collective and distributed.is_distributed()
        self._writes_meta = not self._collective or distributed.is_main()
        if self._writes_meta and not meta_path.exists():
            # An empty store from the start: interrupted before its first shard, it resumes.
            write_json(meta_path, self.meta)
        self._first_row = self.n_tokens
        self._pending: list[dict[str, torch.Tensor]] = []
        self._pending_tokens = 0
        self.shard_info: dict[str, Any] = {}

    @property
    def n_tokens(self) -> int:
        """Tokens written to complete shards so far (by every rank, once listed)."""
        return int(self.meta["n_tokens"])

    def owned(self, rows: np.ndarray) -> np.ndarray:
        """Which of the store's rows ``rows`` [n] (numbered from its first row) this rank adds:
        the new ones (from ``n_tokens`` at opening) in its shards; every new one when the
        writer is not collective."""
        new = rows >= self._first_row
        if not self._collective:
            return new
        shard = (rows - self._first_row) // self.shard_tokens
        return new & (shard % distributed.world_size() == distributed.rank())

    def add(self, acts: torch.Tensor, **extra: torch.Tensor) -> None:
        """Queue activations [n, d_in] (and per-token tensors such as ``token_ids`` [n])."""
        self._pending.append(
            {
                "acts": acts.detach().to("cpu", DTYPES[self.meta["dtype"]]),
                **{k: v.detach().cpu() for k, v in extra.items()},
            }
        )
        self._pending_tokens += acts.shape[0]
        while self._pending_tokens >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self, **meta: Any) -> ActivationStore:
        """Write what is queued as a last shard, record ``meta`` and return the store."""
        if self._pending_tokens:
            self._flush(self._pending_tokens)
        if self._collective:
            # Empty rounds until no rank has a shard left to list.
            while any(entry is not None for entry in self._list(None)):
                pass
        self.meta.update(meta)
        if self._writes_meta:
            write_json(self.path / META_FILE, self.meta)
        if self._collective:
            distributed.check_peers()  # the other ranks read meta.json once rank 0 wrote it
        return ActivationStore.open(self.path)

    def _flush(self, n: int) -> None:
        keys = self._pending[0].keys()
        joined = {k: torch.cat([p[k] for p in self._pending]) for k in keys}
        shard = {k: v[:n].contiguous() for k, v in joined.items()}
        rest = {k: v[n:] for k, v in joined.items()}
        self._pending = [rest] if rest["acts"].shape[0] else []
        self._pending_tokens -= n
        # A round's shards follow those listed, in rank order (see the class docstring).
        index = len(self.meta["shards"]) + (distributed.rank() if self._collective else 0)
        name = f"shard_{index:05d}.safetensors"
        with atomic_file(self.path / name) as tmp:
            save_file(shard, str(tmp))
        self._list({"file": name, "n_tokens": n, **self.shard_info})

    def _list(self, entry: dict[str, Any] | None) -> list[dict[str, Any] | None]:
        """Add this round's shards (``entry``: this rank's, or None) to ``meta.json``."""
        if not self._collective:
            entries: list[dict[str, Any] | None] = [entry]
        else:
            entries = distributed.all_gather(entry)
            for rank, shard in enumerate(entries):
                if shard is not None and not (self.path / shard["file"]).is_file():
                    raise SaegeoError(
                        f"{self.path / shard['file']}: written by rank {rank} but not seen by "
                        f"rank {distributed.rank()}; the ranks must share the store's file system"
                    )
        listed = [shard for shard in entries if shard is not None]
        for shard in listed:
            self.meta["shards"].append(shard)
            self.meta["n_tokens"] = self.n_tokens + shard["n_tokens"]
        if listed and self._writes_meta:
            write_json(self.path / META_FILE, self.meta)
        return entries
