"""Each SAE architecture's behaviour in one place, found through a registry by name.

An :class:`Architecture` says how an SAE of that kind encodes, what its settings must satisfy,
how its latents combine with another SAE's (``union``), how it is written in SAELens layout and
how a refit decoder is folded back into it. :class:`saegeo.SAE` and everything else ask
``sae.architecture`` instead of branching on ``sae.arch``; a new architecture is one subclass
here plus its reader in :mod:`saegeo.formats.sae_files`.

| arch | encode (x already normalised and centred) | union | SAELens name |
|---|---|---|---|
| ``relu`` | relu(x W_enc + b_enc) | additive | ``standard`` |
| ``jumprelu`` | pre · 1[pre > threshold] | additive | ``jumprelu`` |
| ``topk`` | the k largest of relu(pre) per row | topk | ``topk`` |
| ``matching_pursuit`` | SAELens's serial pursuit over W_dec | pursuit | ``matching_pursuit`` |

*Additive* latents fire independently of each other, so the union of two additive SAEs fires
each latent as in its own SAE; TopK latents compete for k slots and pursuit atoms for the
residual.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from saegeo.core.pursuit import choose_method, matching_pursuit
from saegeo.errors import SaegeoError

if TYPE_CHECKING:
    from saegeo.core.sae import SAE

Union = Literal["additive", "topk", "pursuit"]
GRAM_CACHE_BYTES = 2**30
"""Largest matching-pursuit Gram matrix an SAE keeps between ``encode`` calls."""


class Architecture:
    """What one architecture does; subclasses override what differs from a ReLU SAE."""

    name: ClassVar[str]
    """The value of ``SAE.arch``."""
    saelens_name: ClassVar[str]
    """``architecture`` in a SAELens ``cfg.json``."""
    union: ClassVar[Union] = "additive"
    """How latents of two SAEs of this kind combine (see the module docstring)."""
    tied: ClassVar[bool] = False
    """The encoder is the decoder's transpose and encoding is not one linear map."""

    # ------------------------------------------------------------------ the function

    def check(self, sae: SAE, source: str) -> None:
        """Raise a SaegeoError naming ``source`` when the SAE's settings do not fit."""

    def activate(
        self, sae: SAE, pre_BF: torch.Tensor, cols: slice | torch.Tensor = slice(None)
    ) -> torch.Tensor:
        """Activations [B, F] of latents ``cols`` from their pre-activations."""
        return pre_BF.relu()

    def encode(self, sae: SAE, x_BD: torch.Tensor) -> torch.Tensor:
        """Latent activations [B, width] for inputs ``x`` [B, d_in] (in input units)."""
        return self.activate(sae, sae.pre_acts(x_BD))

    def output_bias(self, sae: SAE) -> torch.Tensor:
        """The bias ``decode`` adds [D]."""
        return sae.b_dec

    # ------------------------------------------------------------------ settings

    def settings(self, sae: SAE) -> str:
        """What controls the SAE's L0, in words."""
        return "L1-trained ReLU (no explicit L0 setting)"

    def repr_settings(self, sae: SAE) -> str:
        """Settings shown by ``repr(sae)`` after the sizes (empty or ``", k=32"``)."""
        return ""

    def select_changes(self, sae: SAE, n_kept: int) -> dict[str, Any]:
        """Settings that change when only ``n_kept`` latents are kept (see ``SAE.select``)."""
        return {}

    def saelens_config(self, sae: SAE) -> dict[str, Any]:
        """Architecture-specific ``cfg.json`` entries of the SAELens layout."""
        return {}

    def saelens_weights(self, sae: SAE) -> dict[str, torch.Tensor]:
        """The tensors of ``sae_weights.safetensors``."""
        weights = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
        if sae.threshold is not None:
            weights["threshold"] = sae.threshold
        return weights

    # ------------------------------------------------------------------ latent surgery

    def to_additive(self, sae: SAE, acts: Iterable[torch.Tensor] | torch.Tensor) -> SAE:
        """The SAE in a form whose latents fire independently (TopK: calibrated JumpReLU)."""
        return sae

    def to_jumprelu(self, sae: SAE, acts: Iterable[torch.Tensor] | torch.Tensor) -> SAE:
        """See :meth:`saegeo.SAE.to_jumprelu`; only TopK SAEs convert."""
        raise SaegeoError(f"{sae.name}: to_jumprelu() converts topk SAEs, not {sae.arch}")

    fits_bias: ClassVar[bool] = True
    """Whether a decoder refit solves for ``b_dec`` too."""

    def with_decoder(self, sae: SAE, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor) -> SAE:
        """``sae`` decoding with ``W_dec`` and output bias ``b_dec``, its codes' supports kept.

        The change of input centring is folded into ``b_enc``, and each decoder row's norm
        moves into its latent (``W_enc[:, j]``, ``b_enc[j]``, ``threshold[j]`` scaled by
        ``||W_dec[j]||``, the row by its inverse), so ``forward`` equals decoding the original
        codes with the new decoder and rows stay unit norm.
        """
        b_enc_F = _recentred_bias(sae, b_dec_D)
        norm_F = W_dec_FD.norm(dim=-1).clamp_min(1e-12)
        return sae.replace(
            W_enc=sae.W_enc * norm_F,
            b_enc=b_enc_F * norm_F,
            W_dec=W_dec_FD / norm_F[:, None],
            b_dec=b_dec_D,
            threshold=None if sae.threshold is None else sae.threshold * norm_F,
        )


def _recentred_bias(sae: SAE, b_dec_D: torch.Tensor) -> torch.Tensor:
    """``b_enc`` that keeps the pre-activations when the centring moves from ``b_dec`` to
    ``b_dec_D``: ``x − b_old = (x − b_new) + (b_new − b_old)``."""
    if not sae.apply_b_dec_to_input:
        return sae.b_enc
    return sae.b_enc + (b_dec_D - sae.b_dec) @ sae.W_enc


class ReLU(Architecture):
    name = "relu"
    saelens_name = "standard"


class JumpReLU(Architecture):
    name = "jumprelu"
    saelens_name = "jumprelu"

    def check(self, sae: SAE, source: str) -> None:
        if sae.threshold is None:
            raise SaegeoError(f"{source}: a jumprelu SAE needs a threshold tensor")

    def activate(
        self, sae: SAE, pre_BF: torch.Tensor, cols: slice | torch.Tensor = slice(None)
    ) -> torch.Tensor:
        assert sae.threshold is not None
        return pre_BF.relu() * (pre_BF > sae.threshold[cols]).to(pre_BF.dtype)

    def settings(self, sae: SAE) -> str:
        assert sae.threshold is not None
        t = sae.threshold.float()
        return (
            f"threshold min/median/max {float(t.min()):.4g}/{float(t.median()):.4g}/"
            f"{float(t.max()):.4g}"
        )


class TopK(Architecture):
    name = "topk"
    saelens_name = "topk"
    union = "topk"

    def check(self, sae: SAE, source: str) -> None:
        if isinstance(sae.k, bool) or not isinstance(sae.k, int) or not 0 < sae.k <= sae.width:
            raise SaegeoError(
                f"{source}: a topk SAE needs an integer 0 < k <= width, got k={sae.k}"
            )

    def activate(
        self, sae: SAE, pre_BF: torch.Tensor, cols: slice | torch.Tensor = slice(None)
    ) -> torch.Tensor:
        assert sae.k is not None
        top = pre_BF.topk(min(sae.k, pre_BF.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(pre_BF).scatter_(-1, top.indices, top.values.relu())

    def settings(self, sae: SAE) -> str:
        return f"k={sae.k}"

    def repr_settings(self, sae: SAE) -> str:
        return f", k={sae.k}"

    def select_changes(self, sae: SAE, n_kept: int) -> dict[str, Any]:
        return {"k": min(int(sae.k or 1), max(1, n_kept))}

    def saelens_config(self, sae: SAE) -> dict[str, Any]:
        return {"k": sae.k, "rescale_acts_by_decoder_norm": False}

    def to_additive(self, sae: SAE, acts: Iterable[torch.Tensor] | torch.Tensor) -> SAE:
        return self.to_jumprelu(sae, acts)

    @torch.no_grad()
    def to_jumprelu(self, sae: SAE, acts: Iterable[torch.Tensor] | torch.Tensor) -> SAE:
        assert sae.k is not None
        if isinstance(acts, torch.Tensor):
            batches: Iterable[torch.Tensor] = [acts]
            n_tokens = acts.shape[0]
        elif hasattr(acts, "n_tokens"):  # an ActivationStore knows its size before reading
            batches, n_tokens = acts, int(acts.n_tokens)  # type: ignore[attr-defined]
        else:
            batches = list(acts)
            n_tokens = sum(batch.shape[0] for batch in batches)
        if n_tokens == 0:
            raise SaegeoError(f"{sae.name}: to_jumprelu() got no activations")
        budget = n_tokens * sae.k
        kept = torch.empty(0, dtype=sae.dtype, device=sae.device)
        for batch in batches:
            pre_BF = sae.pre_acts(batch).relu()
            kept = torch.cat([kept, pre_BF[pre_BF > 0]])
            if kept.numel() > budget:
                kept = kept.topk(budget, sorted=False).values
        # The threshold sits just below the (N·k)-th largest positive pre-activation, so that
        # exactly N·k activations (ties aside) exceed it.
        value = float(kept.min()) if kept.numel() >= budget else 0.0
        threshold = torch.nextafter(torch.tensor(value), torch.tensor(-1.0)).clamp_min(0.0)
        return sae.replace(
            arch="jumprelu",
            k=None,
            threshold=torch.full(
                (sae.width,), float(threshold), dtype=sae.dtype, device=sae.device
            ),
            metadata={**sae.metadata, "converted_from": f"topk (k={sae.k})"},
        )

    def with_decoder(self, sae: SAE, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor) -> SAE:
        # Scaling a TopK latent would change which k win: the decoder rows keep their norms.
        return sae.replace(W_dec=W_dec_FD, b_dec=b_dec_D, b_enc=_recentred_bias(sae, b_dec_D))


class MatchingPursuit(Architecture):
    name = "matching_pursuit"
    saelens_name = "matching_pursuit"
    union = "pursuit"
    tied = True
    fits_bias = False  # b_dec centres the pursuit's input: it is not a free output bias

    def check(self, sae: SAE, source: str) -> None:
        if sae.max_iterations is not None and (
            isinstance(sae.max_iterations, bool)
            or not isinstance(sae.max_iterations, int)
            or sae.max_iterations < 1
        ):
            raise SaegeoError(
                f"{source}: max_iterations must be an integer >= 1 or None, "
                f"got {sae.max_iterations!r}"
            )

    def activate(
        self, sae: SAE, pre_BF: torch.Tensor, cols: slice | torch.Tensor = slice(None)
    ) -> torch.Tensor:
        raise SaegeoError(f"{sae.name}: matching pursuit has no single pre-activation")

    def encode(self, sae: SAE, x_BD: torch.Tensor) -> torch.Tensor:
        sae_in_BD = sae.sae_in(x_BD)
        return matching_pursuit(
            sae_in_BD,
            sae.W_dec,
            residual_threshold=sae.residual_threshold,
            max_iterations=sae.max_iterations,
            stop_on_duplicate_support=sae.stop_on_duplicate_support,
            gram_FF=_pursuit_gram(sae, sae_in_BD.reshape(-1, sae.d_in).shape[0]),
        )

    def output_bias(self, sae: SAE) -> torch.Tensor:
        return sae.b_dec if sae.apply_b_dec_to_input else torch.zeros_like(sae.b_dec)

    def settings(self, sae: SAE) -> str:
        iters = sae.max_iterations if sae.max_iterations is not None else f"d_in={sae.d_in}"
        return (
            f"max_iterations={iters}, residual_threshold={sae.residual_threshold:g}, "
            f"stop_on_duplicate_support={sae.stop_on_duplicate_support}"
        )

    def saelens_config(self, sae: SAE) -> dict[str, Any]:
        return {
            "residual_threshold": sae.residual_threshold,
            "max_iterations": sae.max_iterations,
            "stop_on_duplicate_support": sae.stop_on_duplicate_support,
        }

    def saelens_weights(self, sae: SAE) -> dict[str, torch.Tensor]:
        return {"W_dec": sae.W_dec, "b_dec": sae.b_dec}

    def with_decoder(self, sae: SAE, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor) -> SAE:
        # Codes are chosen by the dictionary itself: the refit is one step of the method of
        # optimal directions, rows renormalised, and b_dec (the input centring) kept.
        if not torch.equal(b_dec_D, self.output_bias(sae)):
            raise SaegeoError(
                f"{sae.name}: a matching-pursuit refit keeps b_dec, which centres the "
                "pursuit's input"
            )
        norm_F1 = W_dec_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return sae.replace(W_dec=W_dec_FD / norm_F1)


def _pursuit_gram(sae: SAE, rows: int) -> torch.Tensor | None:
    """``W_dec W_decᵀ`` [width, width] for encoding ``rows`` inputs by matching pursuit.

    Built when the pursuit would build it anyway (``method="auto"`` picks the Gram route for
    ``rows``) and kept on the SAE while ``W_dec`` is unchanged (same storage, no in-place
    change), so that encoding a store batch by batch builds it once. None: leave it to the
    pursuit.
    """
    W_dec_FD = sae.W_dec
    try:
        key = (W_dec_FD.data_ptr(), W_dec_FD._version, W_dec_FD.device, W_dec_FD.dtype)
    except RuntimeError:  # inference tensors keep no version counter
        return None
    cached = getattr(sae, "_gram_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    iterations = sae.d_in if sae.max_iterations is None else sae.max_iterations
    method = choose_method(rows, sae.width, sae.d_in, iterations, sae.dtype, sae.device)
    if method != "gram" or sae.width**2 * W_dec_FD.element_size() > GRAM_CACHE_BYTES:
        return None
    gram_FF = W_dec_FD @ W_dec_FD.T
    object.__setattr__(sae, "_gram_cache", (key, gram_FF))
    return gram_FF


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch for arch in (ReLU(), JumpReLU(), TopK(), MatchingPursuit())
}
"""Every architecture, by ``SAE.arch``."""
ARCHS: tuple[str, ...] = tuple(ARCHITECTURES)


def architecture(name: str, source: str = "SAE") -> Architecture:
    """The registered architecture ``name``; a SaegeoError naming ``source`` otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise SaegeoError(
            f"{source}: unknown architecture {name!r}; saegeo reads {', '.join(ARCHS)}"
        ) from None


def union_kind(saes: Iterable[SAE], what: str, *, action: str | None = None) -> Union:
    """The one kind of union ``saes`` form; a SaegeoError naming ``what`` if they mix kinds.

    ``action`` words the refusal (default: "cannot combine <architectures>").
    """
    saes = list(saes)
    kinds = {sae.architecture.union for sae in saes}
    if len(kinds) == 1:
        return kinds.pop()
    archs = sorted({sae.arch for sae in saes})
    hint = (
        "; convert topk SAEs with to_jumprelu(acts) first" if kinds == {"additive", "topk"} else ""
    )
    raise SaegeoError(
        f"{what}: {action or 'cannot combine ' + ', '.join(archs)}: additive architectures "
        f"(relu, jumprelu) combine with each other, topk with topk and matching pursuit with "
        f"itself{hint}"
    )
