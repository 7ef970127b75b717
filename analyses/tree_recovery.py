"""Tree-recovery benchmark: which parent/child score recovers a known feature hierarchy?

Families of SAEs are trained on synthetic data whose hierarchy is known, by two trainers:
saegeo (``sg.train_family`` on ``saegeo.training.toy`` hierarchies) and SAELens
(``sae_lens.synthetic.train_toy_sae`` on ``generate_hierarchy`` + ``ActivationGenerator`` +
``FeatureDictionary`` data), across seeds, branching factors, depths, mutual exclusivity on
and off, and TopK / BatchTopK / ReLU / Matryoshka (BatchTopK) families. A family's widths are
the numbers of true features down to each depth (so its last member can give every feature a
latent), with ``k`` = depth + 1 true features on the deepest tokens.

Each parent/child score gives the edges of the family's feature DAG; they are scored by
:mod:`saegeo.trees.recovery` (latent -> true feature of max decoder
cosine, latents below 0.5 left out; an edge is correct when the child's true feature lies in
the subtree of the parent's true feature, itself included; recall over the true pairs among
scored latents of adjacent widths).

Besides the published definitions and the co-firing scores of :mod:`saegeo.geometry.cofiring`
(nesting, containment), the script prints candidates that did not beat them: base-rate
contrasts (lift, ``P(p | c) − P(p | not c)``, and its normalised form) and their combinations
with presence.

Scores with a free threshold have it chosen on *calibration* families (other seeds, never the
evaluation families), by the best mean F1. The script prints precision and recall of every
method, mean and worst over seeds, per family kind, then overall.

    PYTHONPATH=. python analyses/tree_recovery.py            # full run (~10-15 min, 2 cores)
    PYTHONPATH=. python analyses/tree_recovery.py --quick    # about a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import saegeo as sg
from saegeo.geometry.cofiring import (
    InputMeans,
    cofiring,
    containment,
    input_means,
    nesting,
    presence_scores,
    present_codes,
)
from saegeo.geometry.masked_cosine import masked_cosine
from saegeo.geometry.sparse_codes import as_csr, safe_divide
from saegeo.training.toy import ToyConfig, make_toy_model
from saegeo.trees.dag import DEFAULT_THRESHOLDS
from saegeo.trees.recovery import Recovery, latent_features, recovery

ARCHS = ("topk", "batchtopk", "relu", "matryoshka")
ROOT_PROB, CHILD_PROB = 0.12, 0.3


@dataclass(frozen=True)
class Setting:
    """One synthetic family: who trains it, on which hierarchy, with which architecture."""

    trainer: str  # "saegeo" or "saelens"
    arch: str  # one of ARCHS
    n_roots: int = 6
    branching: int = 3
    depth: int = 2
    exclusive: bool = True
    d: int = 96
    seed: int = 0

    @property
    def kind(self) -> str:
        me = "ME" if self.exclusive else "indep"
        return f"{self.trainer}/{self.arch} r{self.n_roots} b{self.branching} d{self.depth} {me}"

    @property
    def widths(self) -> list[int]:
        return [
            self.n_roots * sum(self.branching**i for i in range(l + 1))
            for l in range(self.depth + 1)
        ]

    @property
    def child_prob(self) -> float:
        return min(CHILD_PROB, 0.9 / self.branching) if self.exclusive else CHILD_PROB


class Truth:
    """A trained family, its true directions and parents, and fresh evaluation activations."""

    def __init__(
        self,
        family: sg.Family,
        directions_TD: torch.Tensor,
        parent: list[int],
        acts_ND: torch.Tensor,
    ):
        self.family, self.directions_TD, self.parent, self.acts_ND = (
            family,
            directions_TD,
            parent,
            acts_ND,
        )


# --------------------------------------------------------------------------- training


def train_saegeo(s: Setting, steps: int, batch: int, eval_tokens: int) -> Truth:
    toy = make_toy_model(
        ToyConfig(
            n_roots=s.n_roots,
            branching=s.branching,
            depth=s.depth,
            d=s.d,
            root_prob=ROOT_PROB,
            child_prob=s.child_prob,
            exclusive=s.exclusive,
            seed=s.seed,
        )
    )
    train = toy.sample(min(steps * batch, 200_000), seed=s.seed).acts
    widths = s.widths
    arch = {
        "topk": "topk",
        "batchtopk": "batchtopk",
        "relu": "relu",
        "matryoshka": "matryoshka_batchtopk",
    }[s.arch]
    config = sg.TrainConfig(
        arch=arch,
        k=s.depth + 1,
        tokens=steps * batch,
        batch_size=batch,
        lr=3e-3,
        eval_tokens=0,
        seed=s.seed,
        progress=False,
        device="cpu",
    )
    if s.arch == "matryoshka":
        sae, _ = sg.train_sae(
            train, dataclasses.replace(config, width=widths[-1], matryoshka_widths=tuple(widths))
        )
        family = sg.Family.from_matryoshka(sae)
    else:
        saes = []
        for level, width in enumerate(widths):
            member = dataclasses.replace(
                config,
                width=width,
                k=level + 1,
                seed=s.seed + level,
                target_l0=float(level + 1) if s.arch == "relu" else None,
            )
            saes.append(sg.train_sae(train, member)[0])
        family = sg.Family(saes)
    acts = toy.sample(eval_tokens, seed=s.seed + 10_000).acts
    return Truth(family, toy.directions, toy.parent.tolist(), acts)


def train_saelens(s: Setting, steps: int, batch: int, eval_tokens: int) -> Truth:
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.synthetic import (
        ActivationGenerator,
        FeatureDictionary,
        HierarchyConfig,
        generate_hierarchy,
        train_toy_sae,
    )

    widths = s.widths
    n_features = widths[-1]
    hierarchy = generate_hierarchy(
        n_features,
        HierarchyConfig(
            total_root_nodes=s.n_roots,
            branching_factor=s.branching,
            max_depth=s.depth,
            mutually_exclusive_portion=1.0 if s.exclusive else 0.0,
        ),
        seed=s.seed,
    )
    parent = [-1] * n_features

    def walk(node: Any) -> None:
        for child in node.children:
            parent[child.feature_index] = node.feature_index
            walk(child)

    for root in hierarchy.roots:
        walk(root)
    depth = [0] * n_features
    for f in range(n_features):
        depth[f] = 0 if parent[f] < 0 else depth[parent[f]] + 1
    # Marginal firing rates as in the saegeo toy; the hierarchy's correction factors undo the
    # thinning by parents and mutual exclusion.
    base = torch.tensor([ROOT_PROB * s.child_prob ** depth[f] for f in range(n_features)])
    probs = (base * hierarchy.compute_probability_correction_factors(base)).clamp(max=1.0)
    torch.manual_seed(s.seed)
    generator = ActivationGenerator(n_features, probs, modify_activations=hierarchy.modifier)
    dictionary = FeatureDictionary(n_features, s.d, seed=s.seed)

    def build(width: int, k: int, level: int) -> Any:
        torch.manual_seed(s.seed * 100 + level)
        if s.arch == "topk":
            return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=s.d, d_sae=width, k=k))
        if s.arch == "batchtopk":
            return BatchTopKTrainingSAE(
                BatchTopKTrainingSAEConfig(d_in=s.d, d_sae=width, k=float(k))
            )
        if s.arch == "relu":
            return StandardTrainingSAE(
                StandardTrainingSAEConfig(d_in=s.d, d_sae=width, l1_coefficient=0.05)
            )
        return MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                d_in=s.d, d_sae=width, k=float(k), matryoshka_widths=list(widths)
            )
        )

    members = (
        [(widths[-1], s.depth + 1, 0)]
        if s.arch == "matryoshka"
        else [(w, l + 1, l) for l, w in enumerate(widths)]
    )
    saes = []
    for width, k, level in members:
        lens = build(width, k, level)
        train_toy_sae(
            lens, dictionary, generator, training_samples=steps * batch, batch_size=batch, lr=2e-3
        )
        with tempfile.TemporaryDirectory() as tmp:
            # The training save keeps matryoshka_widths; both load as the inference SAE.
            lens.save_model(tmp)
            saes.append(sg.load_sae(tmp))
    family = sg.Family.from_matryoshka(saes[0]) if s.arch == "matryoshka" else sg.Family(saes)
    torch.manual_seed(s.seed + 10_000)
    with torch.no_grad():
        acts = dictionary(generator(eval_tokens))
    return Truth(family, dictionary.feature_vectors.detach(), parent, acts)


# --------------------------------------------------------------------------- scores


def _dense_pairs(M_PC: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(np.where(M_PC > 0, M_PC, 0.0))


def _unit(W: torch.Tensor, dim: int) -> np.ndarray:
    W = W.detach().double()
    return (W / W.norm(dim=dim, keepdim=True).clamp_min(1e-12)).numpy()


def presence(small: sg.SAE, means_small: InputMeans, means_large: InputMeans) -> sp.csr_matrix:
    """Parent presence for every pair (dense over pairs, fine at toy widths)."""
    n_small, n_large = means_small.on_latent.shape[0], means_large.on_latent.shape[0]
    rows, cols = np.divmod(np.arange(n_small * n_large), n_large)
    values = presence_scores(small.W_dec, means_small, means_large, rows, cols)
    return _dense_pairs(values.reshape(n_small, n_large))


class Level(NamedTuple):
    """One member of a family with its codes on the evaluation tokens and its input means."""

    sae: sg.SAE
    codes: sp.csr_matrix
    means: InputMeans
    present: sp.csr_matrix
    """[N, F]: where each latent fires or its direction is in the input (``present_codes``)."""


# name -> (score(parent level, child level) -> sparse [P, C], fixed threshold or None: tuned)
ScoreFn = Callable[[Level, Level], sp.csr_matrix]


def _decoder(p: Level, c: Level) -> sp.csr_matrix:
    return _dense_pairs(_unit(p.sae.W_dec, 1) @ _unit(c.sae.W_dec, 1).T)


def _encoder(p: Level, c: Level) -> sp.csr_matrix:
    return _dense_pairs(_unit(p.sae.W_enc, 0).T @ _unit(c.sae.W_dec, 1).T)


def _presence_on(p: Level, c: Level, M: sp.csr_matrix) -> sp.csr_matrix:
    """Presence at the stored pairs of ``M``."""
    coo = M.tocoo()
    values = presence_scores(p.sae.W_dec, p.means, c.means, coo.row, coo.col)
    return sp.csr_matrix((values, (coo.row, coo.col)), shape=M.shape)


def _lift(p: Level, c: Level, *, normalised: bool, present: bool = False) -> sp.csr_matrix:
    """``P(p | c) − P(p | not c)`` at the co-firing pairs; divided by ``1 − P(p | not c)``
    when ``normalised``. Pairs that never co-fire have a negative lift and stay absent.
    With ``present``, "p" is "p fires or its direction is in the input"."""
    codes_p = p.present if present else p.codes
    coo = cofiring(codes_p, c.codes).tocoo()
    n_tokens = p.codes.shape[0]
    fires_p = as_csr(codes_p, "codes").getnnz(axis=0)[coo.row].astype(np.float64)
    fires_c = as_csr(c.codes, "codes").getnnz(axis=0)[coo.col].astype(np.float64)
    elsewhere = safe_divide(fires_p - coo.data * fires_c, n_tokens - fires_c)
    lift = coo.data - elsewhere
    if normalised:
        lift = safe_divide(lift, 1.0 - elsewhere)
    return sp.csr_matrix((lift, (coo.row, coo.col)), shape=coo.shape)


def _min(M: sp.csr_matrix, N: sp.csr_matrix) -> sp.csr_matrix:
    """Entry-wise minimum of two pair scores (dense over pairs, fine at toy widths)."""
    return _dense_pairs(np.minimum(M.toarray(), N.toarray()))


def _gated(p: Level, c: Level) -> sp.csr_matrix:
    """max(co-firing, presence) where the normalised lift is positive."""
    gate = _lift(p, c, normalised=True)
    gate.data = (gate.data > 0).astype(np.float64)
    score = cofiring(p.codes, c.codes).maximum(_presence_on(p, c, gate))
    return sp.csr_matrix(score.multiply(gate))


METHODS: dict[str, tuple[ScoreFn, float | None]] = {
    "decoder cosine > 0.7 (stitching paper)": (_decoder, DEFAULT_THRESHOLDS["decoder_cosine"]),
    "directed scaled MCS > 0.6 (Matryoshka tree view)": (
        lambda p, c: masked_cosine(p.codes, c.codes, directed=True, scale_by_max=True),
        DEFAULT_THRESHOLDS["masked_cosine"],
    ),
    "decoder cosine (tuned)": (_decoder, None),
    "encoder cos(W_enc parent, W_dec child)": (_encoder, None),
    "co-firing P(parent|child)": (lambda p, c: cofiring(p.codes, c.codes), None),
    "activation-mass share": (lambda p, c: cofiring(p.codes, c.codes, weighted=True), None),
    "parent presence in input": (lambda p, c: presence(p.sae, p.means, c.means), None),
    "co-firing or decoder cosine > 0.7": (
        lambda p, c: cofiring(p.codes, c.codes).maximum((_decoder(p, c) > 0.7).astype(np.float64)),
        None,
    ),
    "nesting = min(co-firing, presence)": (
        lambda p, c: nesting(p.codes, c.codes, p.sae.W_dec, p.means, c.means),
        None,
    ),
    "containment = min(P(parent present | child), presence)": (
        lambda p, c: containment(p.present, c.codes, p.sae.W_dec, p.means, c.means),
        None,
    ),
    # Other candidates: base-rate contrasts (lift) and combinations with presence.
    "lift P(p|c) - P(p|not c)": (lambda p, c: _lift(p, c, normalised=False), None),
    "normalised lift": (lambda p, c: _lift(p, c, normalised=True), None),
    "min(lift, presence)": (
        lambda p, c: _min(_lift(p, c, normalised=False), presence(p.sae, p.means, c.means)),
        None,
    ),
    "min(normalised lift, presence)": (
        lambda p, c: _min(_lift(p, c, normalised=True), presence(p.sae, p.means, c.means)),
        None,
    ),
    "P(parent present | child)": (lambda p, c: cofiring(p.present, c.codes), None),
    "max(co-firing, presence) where lift > 0": (_gated, None),
    "min(normalised lift of parent present, presence)": (
        lambda p, c: _min(
            _lift(p, c, normalised=True, present=True), presence(p.sae, p.means, c.means)
        ),
        None,
    ),
}
Scored = tuple[list[np.ndarray], dict[str, list[sp.csr_matrix]], list[int]]
"""Latent -> true feature per level, every method's scores per level pair, true parents."""
GRID = np.round(np.arange(0.1, 0.96, 0.05), 2)


def family_scores(truth: Truth) -> tuple[list[np.ndarray], dict[str, list[sp.csr_matrix]]]:
    """Latent -> true feature per level, and every method's score matrices per level pair."""
    fam = truth.family
    features = [latent_features(sae.W_dec, truth.directions_TD) for sae in fam]
    levels = []
    for sae in fam:
        codes = sg.encode_codes(sae, truth.acts_ND, progress=False, device="cpu")
        means = input_means(codes, truth.acts_ND)
        present = present_codes(codes, truth.acts_ND, sae.W_dec, means)
        levels.append(Level(sae, codes, means, present))
    scores = {
        name: [sp.csr_matrix(fn(levels[l], levels[l + 1])) for l in range(len(fam) - 1)]
        for name, (fn, _) in METHODS.items()
    }
    return features, scores


def evaluate(
    features: list[np.ndarray], mats: list[sp.csr_matrix], parent: list[int], threshold: float
) -> Recovery:
    edges = []
    for level, M in enumerate(mats):
        coo = M.tocoo()
        keep = coo.data > threshold
        edges += [
            ((level, int(i)), (level + 1, int(j)))
            for i, j in zip(coo.row[keep], coo.col[keep], strict=True)
        ]
    return recovery(edges, features, parent)


def _f1(r: Recovery) -> float:
    return 2 * r.precision * r.recall / max(r.precision + r.recall, 1e-12)


def calibrate(results: list[Scored]) -> dict[str, float]:
    """The threshold of each free method with the best mean F1 over the calibration families."""
    chosen = {}
    for name, (_, fixed) in METHODS.items():
        if fixed is not None:
            chosen[name] = fixed
            continue
        f1 = [np.mean([_f1(evaluate(f, s[name], p, t)) for f, s, p in results]) for t in GRID]
        chosen[name] = float(GRID[int(np.argmax(f1))])
    return chosen


# --------------------------------------------------------------------------- grid


def settings(quick: bool, calibration: bool) -> list[Setting]:
    seeds = [100] if calibration else ([0] if quick else [0, 1])
    if quick:
        shapes = [dict(n_roots=4, branching=3, depth=2, exclusive=True, d=48)]
        archs = {"saelens": ("topk", "matryoshka"), "saegeo": ("topk",)}
    elif calibration:
        shapes = [
            dict(n_roots=5, branching=3, depth=2, exclusive=True, d=80),
            dict(n_roots=6, branching=4, depth=1, exclusive=False, d=64),
        ]
        archs = {"saelens": ("topk", "matryoshka"), "saegeo": ("topk", "batchtopk")}
    else:
        shapes = [
            dict(n_roots=6, branching=3, depth=2, exclusive=True, d=96),
            dict(n_roots=6, branching=4, depth=1, exclusive=False, d=64),
        ]
        archs = {"saelens": ARCHS, "saegeo": ARCHS}
    out = []
    for shape_index, shape in enumerate(shapes):
        for trainer, arch_list in archs.items():
            for arch in arch_list:
                # The second shape only with TopK and Matryoshka, to keep the run short.
                if (
                    shape_index > 0
                    and not quick
                    and not calibration
                    and arch not in ("topk", "matryoshka")
                ):
                    continue
                out += [Setting(trainer=trainer, arch=arch, seed=seed, **shape) for seed in seeds]
    return out


def run(quick: bool) -> pd.DataFrame:
    steps = 300 if quick else 1000
    batch = 1024
    eval_tokens = 8_000 if quick else 20_000
    trainers = {"saegeo": train_saegeo, "saelens": train_saelens}
    start = time.time()

    def scored(s: Setting) -> Scored:
        truth = trainers[s.trainer](s, steps, batch, eval_tokens)
        features, scores = family_scores(truth)
        print(
            f"  {s.kind} seed {s.seed}: widths {truth.family.widths}, "
            f"scored latents {[int((f >= 0).sum()) for f in features]} "
            f"({time.time() - start:.0f}s)",
            flush=True,
        )
        return features, scores, truth.parent

    print("calibration families (thresholds are chosen here only):", flush=True)
    calibration = [scored(s) for s in settings(quick, calibration=True)]
    thresholds = calibrate(calibration)
    print("thresholds:", {k: v for k, v in thresholds.items()}, flush=True)
    print("evaluation families:", flush=True)
    rows = []
    for s in settings(quick, calibration=False):
        features, scores, parent = scored(s)
        for name, threshold in thresholds.items():
            r = evaluate(features, scores[name], parent, threshold)
            rows.append(
                {
                    "family": s.kind,
                    "trainer": s.trainer,
                    "seed": s.seed,
                    "method": name,
                    "threshold": threshold,
                    "precision": r.precision,
                    "recall": r.recall,
                    "true_pairs": r.true_pairs,
                    "predicted": r.predicted,
                }
            )
    print(f"done in {time.time() - start:.0f}s", flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    agg = {"precision": ["mean", "min"], "recall": ["mean", "min"]}
    per_family = df.groupby(["family", "method"], sort=False).agg(agg)
    overall = df.groupby(["trainer", "method"], sort=False).agg(agg)
    for table in (per_family, overall):
        table.columns = [f"{m} {'worst' if s == 'min' else s}" for m, s in table.columns]
    return per_family, overall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small setting (about a minute)")
    parser.add_argument("--csv", help="also write every family's result to this CSV")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    df = run(args.quick)
    per_family, overall = summarise(df)
    pd.set_option("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 60)
    print("\nper family kind (mean and worst over seeds):")
    print(per_family.round(2).to_string())
    print("\nby trainer (mean and worst over every family and seed):")
    print(overall.round(2).to_string())
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
