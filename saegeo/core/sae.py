"""One SAE class for every architecture saegeo reads: ReLU, JumpReLU, TopK and matching pursuit.

What differs between architectures lives in :mod:`saegeo.core.architectures` (``sae.architecture``)
and the input normalisation in :mod:`saegeo.core.normalization`; this class holds the tensors
and the steps every architecture shares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch

from saegeo.core import normalization
from saegeo.core.architectures import ARCHS, Architecture, architecture, union_kind
from saegeo.core.feature_info import select_metadata
from saegeo.core.finite import all_finite
from saegeo.core.normalization import NORMALIZATIONS, Normalization
from saegeo.errors import ArgumentError, SaegeoError, ShapeError
from saegeo.runtime.devices import resolve_device

Arch = Literal["relu", "jumprelu", "topk", "matching_pursuit"]
assert get_args(Arch) == ARCHS

__all__ = ["ARCHS", "NORMALIZATIONS", "SAE", "Arch", "Normalization", "check_same_site", "concat"]


@dataclass(frozen=True, eq=False)
class SAE:
    """A sparse autoencoder of any supported architecture, as plain tensors.

    Attributes
    ----------
    W_enc
        encoder [d_in, width]; for ``matching_pursuit`` always ``W_dec.T`` (tied).
    b_enc
        encoder bias [width]; zeros and unused for ``matching_pursuit``.
    W_dec
        decoder [width, d_in]; row ``j`` is feature ``j``'s direction.
    b_dec
        decoder bias [d_in].
    arch
        ``relu`` (SAELens "standard"), ``jumprelu`` (also BatchTopK and Matryoshka
        saved for inference), ``topk`` or ``matching_pursuit``.
    threshold
        JumpReLU thresholds [width]; None for other architectures.
    k
        active latents per token for ``topk``.
    residual_threshold
        matching pursuit stops a row once its residual norm is below this
        (0 disables the rule). SAELens's default.
    max_iterations
        matching pursuit iteration cap; None means d_in, as in SAELens.
    stop_on_duplicate_support
        matching pursuit stops a row whose support did not change.
    apply_b_dec_to_input
        subtract ``b_dec`` from the input before encoding.
    normalize_activations
        SAELens's run-time input normalisation.
    metadata
        model name, hook name, Matryoshka widths, source path and anything else
        that travels with the weights; never used by the math.

    Examples
    --------
    >>> import torch
    >>> sae = SAE.from_decoder(torch.eye(3))
    >>> sae.width, sae.d_in, sae.arch
    (3, 3, 'matching_pursuit')
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    arch: Arch = "relu"
    threshold: torch.Tensor | None = None
    k: int | None = None
    residual_threshold: float = 1e-2
    max_iterations: int | None = None
    stop_on_duplicate_support: bool = True
    apply_b_dec_to_input: bool = True
    normalize_activations: Normalization = "none"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                object.__setattr__(self, name, as_input(value, name))
        if architecture(self.arch).tied:
            object.__setattr__(self, "W_enc", self.W_dec.T)
        self.check(str(self.metadata.get("source") or "SAE"))

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_decoder(
        cls, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None, **settings: Any
    ) -> SAE:
        """A decoder-only dictionary [width, d_in], encoded by matching pursuit (tied).

        A floating-point ``W_dec`` keeps its dtype (``b_dec`` takes it too); any other
        becomes float32.
        """
        W_dec_FD = torch.as_tensor(W_dec)
        if not W_dec_FD.is_floating_point():
            W_dec_FD = W_dec_FD.float()
        if W_dec_FD.ndim != 2:
            raise ShapeError(f"W_dec must be 2-D [width, d_in], got shape {tuple(W_dec_FD.shape)}")
        width, d_in = W_dec_FD.shape
        b_dec_D = (
            torch.zeros(d_in, dtype=W_dec_FD.dtype)
            if b_dec is None
            else torch.as_tensor(b_dec).to(W_dec_FD.dtype)
        )
        return cls(
            W_enc=W_dec_FD.T,
            b_enc=torch.zeros(width, dtype=W_dec_FD.dtype),
            W_dec=W_dec_FD,
            b_dec=b_dec_D,
            arch="matching_pursuit",
            **settings,
        )

    def replace(self, **changes: Any) -> SAE:
        """A copy with some fields changed (tensors are shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SAE:
        """The same SAE with its tensors on ``device`` and/or in ``dtype``; a device this
        machine lacks raises an ArgumentError naming it."""
        if device is not None:
            device = resolve_device(device)

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return self.replace(
            W_enc=move(self.W_enc),
            b_enc=move(self.b_enc),
            W_dec=move(self.W_dec),
            b_dec=move(self.b_dec),
            threshold=move(self.threshold),
        )

    # ----------------------------------------------------------------- properties

    @property
    def width(self) -> int:
        """Number of latents."""
        return int(self.W_dec.shape[0])

    @property
    def d_in(self) -> int:
        """Input dimension."""
        return int(self.W_dec.shape[1])

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def architecture(self) -> Architecture:
        """This SAE's architecture: how it encodes, combines, is saved and refit."""
        return architecture(self.arch)

    @property
    def additive(self) -> bool:
        """Whether its latents fire independently of each other (relu, jumprelu)."""
        return self.architecture.union == "additive"

    @property
    def name(self) -> str:
        """A short label: the source file's name where known, else arch and width."""
        return str(self.metadata.get("name") or f"{self.arch}-{self.width}")

    def __repr__(self) -> str:
        extra = self.architecture.repr_settings(self)
        return f"SAE(arch={self.arch!r}, d_in={self.d_in}, width={self.width}{extra})"

    # ----------------------------------------------------------------- validation

    def check(self, source: str = "SAE") -> None:
        """Raise a SaegeoError naming ``source`` if shapes, values or settings are inconsistent."""
        arch = architecture(self.arch, source)
        normalization.check(self.normalize_activations, source)
        if self.W_dec.ndim != 2:
            raise ShapeError(f"{source}: W_dec must be 2-D, got shape {tuple(self.W_dec.shape)}")
        width, d_in = self.W_dec.shape
        expected = {
            "W_enc": (d_in, width),
            "b_enc": (width,),
            "b_dec": (d_in,),
        }
        if self.threshold is not None:
            expected["threshold"] = (width,)
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape:
                raise ShapeError(
                    f"{source}: {name} has shape {tuple(tensor.shape)}, expected {shape} "
                    f"for W_dec of shape {(width, d_in)}"
                )
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            tensor = getattr(self, name)
            if tensor is not None and (not tensor.is_floating_point() or tensor.is_complex()):
                raise SaegeoError(
                    f"{source}: {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                    "SAE weights must be real floating point"
                )
            if tensor is not None and not all_finite(tensor):
                raise SaegeoError(f"{source}: {name} holds NaN or infinite values")
        arch.check(self, source)

    # ----------------------------------------------------------------- the function

    def sae_in(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The encoder's input: ``x`` normalised and, with ``apply_b_dec_to_input``, centred."""
        x_BD = normalization.normalize(
            self.normalize_activations, self._input(x, "x", self.d_in, "d_in")
        )
        return x_BD - self.b_dec if self.apply_b_dec_to_input else x_BD

    def _input(
        self, x: torch.Tensor | np.ndarray, name: str, width: int, what: str
    ) -> torch.Tensor:
        """``x`` (a tensor, array or nested list) on this SAE's device and in its dtype,
        checked to end in ``width`` entries (this SAE's ``what``)."""
        x = as_input(x, name)
        if x.ndim == 0 or x.shape[-1] != width:
            raise ShapeError(
                f"{self.name}: {name} has width {x.shape[-1] if x.ndim else 0} (shape "
                f"{tuple(x.shape)}), but this SAE's {what} is {width}; pass [..., {width}]"
            )
        return x.to(device=self.device, dtype=self.dtype)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [batch, width] (not defined for matching pursuit)."""
        if self.architecture.tied:
            raise SaegeoError(f"{self.name}: {self.arch} has no single pre-activation")
        return self.sae_in(x) @ self.W_enc + self.b_enc

    @torch.no_grad()
    def encode(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Latent activations [batch, width] for inputs ``x`` [batch, d_in] (a tensor or a
        numpy array), as SAELens computes."""
        return self.architecture.encode(self, as_input(x, "x"))

    @torch.no_grad()
    def decode(
        self, acts: torch.Tensor | np.ndarray, x: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        """Reconstruction [batch, d_in] from activations [batch, width].

        ``x`` is needed only for ``constant_norm_rescale`` and ``layer_norm``, whose output
        rescaling uses statistics of the input.
        """
        acts_BF = self._input(acts, "acts", self.width, "width")
        x_hat_BD = acts_BF @ self.W_dec + self.architecture.output_bias(self)
        if x is not None:
            x = self._input(x, "x", self.d_in, "d_in")
        try:
            return normalization.denormalize(self.normalize_activations, x_hat_BD, x)
        except SaegeoError as exc:
            raise SaegeoError(f"{self.name}: {exc}") from None

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """decode(encode(x))."""
        return self.decode(self.encode(x), x)

    __call__ = forward

    # ----------------------------------------------------------------- latent surgery

    def select(self, idx: Sequence[int] | torch.Tensor) -> SAE:
        """An SAE that keeps only latents ``idx`` (in that order), with everything else equal.

        For ``topk`` the result keeps ``min(k, len(idx))`` latents per token.
        """
        idx_F = torch.as_tensor(idx, dtype=torch.long, device=self.device).reshape(-1)
        outside = idx_F[(idx_F < 0) | (idx_F >= self.width)]
        if outside.numel():
            raise ArgumentError(
                "idx", int(outside[0]), f"must lie in [0, {self.width}): the latents of {self.name}"
            )
        changes: dict[str, Any] = {
            "W_enc": self.W_enc[:, idx_F],
            "b_enc": self.b_enc[idx_F],
            "W_dec": self.W_dec[idx_F],
            "threshold": None if self.threshold is None else self.threshold[idx_F],
            "metadata": select_metadata(self.metadata, idx_F, self.width),
        }
        changes.update(self.architecture.select_changes(self, idx_F.numel()))
        return self.replace(**changes)

    def centring(self) -> torch.Tensor:
        """What ``sae_in`` subtracts from the (normalised) input: ``b_dec`` or zeros."""
        return self.b_dec if self.apply_b_dec_to_input else torch.zeros_like(self.b_dec)

    def to_jumprelu(self, acts: Iterable[torch.Tensor] | torch.Tensor | np.ndarray) -> SAE:
        """A JumpReLU SAE with one threshold so that mean L0 on ``acts`` equals ``k``.

        This is how BatchTopK SAEs run at inference. ``acts`` is a tensor [N, d_in] or an
        iterable of such batches (an ActivationStore). Only TopK SAEs convert.
        """
        if isinstance(acts, np.ndarray):
            acts = torch.as_tensor(acts)
        return self.architecture.to_jumprelu(self, acts)

    def to_additive(self, acts: Iterable[torch.Tensor] | torch.Tensor | np.ndarray) -> SAE:
        """This SAE with latents that fire independently: TopK SAEs through
        :meth:`to_jumprelu` on ``acts``, every other architecture unchanged."""
        if isinstance(acts, np.ndarray):
            acts = torch.as_tensor(acts)
        return self.architecture.to_additive(self, acts)


def as_input(x: object, name: str) -> torch.Tensor:
    """``x`` as a tensor: tensors as they are, numpy arrays and nested lists converted
    (sharing memory where torch can); anything else raises a SaegeoError naming ``name``."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SaegeoError(
            f"{name}: expected a tensor or numpy array, got {type(x).__name__} ({exc})"
        ) from None


def check_same_site(saes: Sequence[SAE], what: str) -> None:
    """Raise a SaegeoError naming ``what`` unless ``saes`` read inputs of one d_in, normalised
    the same way (what combining their latents needs)."""
    first = saes[0]
    for other in saes[1:]:
        if other.d_in != first.d_in:
            raise ShapeError(
                f"{what}: {other.name} has d_in={other.d_in} but {first.name} has {first.d_in}"
            )
        if other.normalize_activations != first.normalize_activations:
            raise SaegeoError(
                f"{what}: {other.name} normalises inputs with {other.normalize_activations!r}, "
                f"{first.name} with {first.normalize_activations!r}"
            )


def concat(saes: Sequence[SAE]) -> SAE:
    """Union of the latents of SAEs on the same site, in order.

    Additive SAEs (relu, jumprelu) give a jumprelu SAE in which every latent fires exactly as
    in its own SAE: a difference of ``b_dec`` centring is folded into its encoder bias, and
    the output uses the first SAE's ``b_dec``. Matching-pursuit SAEs give a matching-pursuit
    SAE over the union dictionary, with the first SAE's settings. Convert TopK SAEs first
    with :meth:`SAE.to_jumprelu`.
    """
    if not saes:
        raise SaegeoError("concat() needs at least one SAE")
    first = saes[0]
    check_same_site(saes, "concat()")
    kind = union_kind(saes, "concat()")
    sources = [sae.name for sae in saes]
    if kind == "pursuit":
        return first.replace(
            W_dec=torch.cat([sae.W_dec.to(first.device, first.dtype) for sae in saes]),
            b_enc=torch.zeros(
                sum(sae.width for sae in saes), dtype=first.dtype, device=first.device
            ),
            metadata={"sources": sources},
        )
    if kind != "additive":
        raise SaegeoError(
            "concat(): topk SAEs have no exact union (their latents compete for k slots); "
            "convert them with to_jumprelu(acts) first"
        )
    centring_D = first.centring()
    W_enc, b_enc, W_dec, threshold = [], [], [], []
    for sae in saes:
        sae = sae.to(first.device, first.dtype)
        W_enc.append(sae.W_enc)
        b_enc.append(sae.b_enc + (centring_D - sae.centring()) @ sae.W_enc)
        W_dec.append(sae.W_dec)
        threshold.append(
            sae.threshold if sae.threshold is not None else torch.zeros_like(sae.b_enc)
        )
    return SAE(
        W_enc=torch.cat(W_enc, dim=1),
        b_enc=torch.cat(b_enc),
        W_dec=torch.cat(W_dec),
        b_dec=first.b_dec,
        arch="jumprelu",
        threshold=torch.cat(threshold),
        apply_b_dec_to_input=first.apply_b_dec_to_input,
        normalize_activations=first.normalize_activations,
        metadata={"sources": sources},
    )
