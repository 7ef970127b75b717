"""A small family with splitting features, its activations and readable token ids, for the
feature card, the explorer widget and the offline site's browser tests."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

import saegeo as sg

WORDS = [
    *("the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to"),
    *("red", "blue", "sun", "rain", "city", "news", "game", "vote", "bank"),
]


class Words:
    """A tokenizer whose token ids index :data:`WORDS` (a leading space on each)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(" " + WORDS[i] for i in ids)


class ToyExplore(NamedTuple):
    family: sg.Family
    acts: torch.Tensor
    """Activations [N, d_in]."""
    token_ids: np.ndarray
    """Token id of each activation row [N]; token t's row leans on the word's direction."""


def toy_explore(
    *, d: int = 16, widths: tuple[int, ...] = (6, 12, 24), n: int = 1500, seed: int = 0
):
    """ReLU SAEs whose wider members split the narrower ones' features (half their latents
    are perturbed copies of the narrower member's) and add new ones, with activations made of
    a few of the widest member's directions and one word per token."""
    generator = torch.Generator().manual_seed(seed)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True)

    decoders = [unit(torch.randn(widths[0], d, generator=generator))]
    for width in widths[1:]:
        previous = decoders[-1]
        n_split = width // 2
        split = previous[torch.arange(n_split) % previous.shape[0]]
        split = unit(split + 0.25 * torch.randn(n_split, d, generator=generator))
        new = unit(torch.randn(width - n_split, d, generator=generator))
        decoders.append(torch.cat([split, new]))
    saes = [
        sg.SAE(
            W_enc=W_dec_FD.T.clone(),
            b_enc=torch.full((W_dec_FD.shape[0],), -0.6),
            W_dec=W_dec_FD,
            b_dec=torch.zeros(d),
            metadata={"name": f"toy-{W_dec_FD.shape[0]}"},
        )
        for W_dec_FD in decoders
    ]
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(0, len(WORDS), size=n)
    word_dirs_VD = decoders[-1][torch.arange(len(WORDS)) % widths[-1]]
    acts = 0.3 * torch.randn(n, d, generator=generator)
    acts += 2.0 * torch.rand(n, 1, generator=generator) * word_dirs_VD[torch.from_numpy(token_ids)]
    return ToyExplore(sg.Family(saes), acts, token_ids)
