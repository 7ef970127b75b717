"""Bad input to every command: exit 2, one stderr line naming the file or flag, no traceback,
and not one byte of what was on disk changed. Interrupted multi-file writes leave the old
output or the new one, whole.

Each case builds its inputs under a fresh directory, hashes every file there, runs the command
in-process and hashes again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import saegeo as sg
from saegeo.cli import main

D_IN = 8
WIDTHS = (8, 16)
Case = Callable[[Path], tuple[list[str], str]]


def _sae(width: int, seed: int) -> sg.SAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(width, D_IN, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return sg.SAE(
        W_enc=W_dec.T.clone(),
        b_enc=torch.zeros(width),
        W_dec=W_dec,
        b_dec=torch.zeros(D_IN),
        arch="topk",
        k=2,
    )


def _setup(root: Path) -> None:
    """A family of two SAEs under ``root/family``, activations, and a user's own files."""
    for i, width in enumerate(WIDTHS):
        sg.save_sae(_sae(width, i), root / "family" / f"topk-{width}")
    acts = torch.randn(300, D_IN, generator=torch.Generator().manual_seed(5)).numpy()
    np.save(root / "acts.npy", acts)
    (root / "thesis").mkdir()
    (root / "thesis" / "thesis.txt").write_text("four years of work\n")
    (root / "notes.txt").write_text("my notes\n")


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its bytes (directories and FIFOs by kind)."""
    out = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            out[name] = "special"
        elif path.is_dir():
            out[name] = "dir"
        else:
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def family(root: Path) -> list[str]:
    return [str(root / "family" / f"topk-{w}") for w in WIDTHS]


def nan_acts(root: Path) -> Path:
    acts = np.load(root / "acts.npy")
    acts[123, 4] = np.nan
    np.save(root / "nan.npy", acts)
    return root / "nan.npy"


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def huge_store(root: Path) -> Path:
    writer = sg.ShardWriter(root / "store", D_IN, shard_tokens=100)
    writer.add(torch.randn(150, D_IN))
    writer.close()
    meta = json.loads((root / "store" / "meta.json").read_text())
    meta["n_tokens"] = 10**15
    meta["shards"][0]["n_tokens"] = 10**15 - 50
    (root / "store" / "meta.json").write_text(json.dumps(meta))
    return root / "store"


def fifo_cfg(root: Path) -> Path:
    sae_dir = root / "fifo_sae"
    sg.save_sae(_sae(8, 0), sae_dir)
    (sae_dir / "cfg.json").unlink()
    fifo(sae_dir / "cfg.json")
    return sae_dir


def dir_cfg(root: Path) -> Path:
    sae_dir = root / "dir_sae"
    sg.save_sae(_sae(8, 0), sae_dir)
    (sae_dir / "cfg.json").unlink()
    (sae_dir / "cfg.json").mkdir()
    return sae_dir


def previous_table(root: Path) -> Path:
    assert main(["classify", *family(root), "--out", str(root / "table.csv")]) == 0
    return root / "table.csv"


def small_acts(n: int) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        np.save(root / f"rows{n}.npy", np.random.default_rng(0).normal(size=(n, D_IN)))
        return root / f"rows{n}.npy"

    return make


def save_npy(name: str, array: np.ndarray) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        np.save(root / name, array)
        return root / name

    return make


def stitch(root: Path, *extra: str) -> list[str]:
    return ["stitch", *family(root), "--acts", str(root / "acts.npy"), *extra]


def train(root: Path, *extra: str) -> list[str]:
    return ["train", "--acts", str(root / "acts.npy"), "--widths", "8", "--k", "2", *extra]


# Each case: (argv, a string the one stderr line must hold) from the set-up directory.
CASES: dict[str, Case] = {
    # outputs that would destroy data
    "stitch over a folder of the user's": lambda r: (
        stitch(r, "--out", str(r / "thesis")),
        "thesis",
    ),
    "stitch over a user's folder with --force": lambda r: (
        stitch(r, "--out", str(r / "thesis"), "--force"),
        "not a saegeo stitch output",
    ),
    "stitch over its own input family": lambda r: (
        ["stitch", str(r / "family"), "--acts", str(r / "acts.npy"), "--out", str(r / "family")],
        "input",
    ),
    "stitch over a member": lambda r: (stitch(r, "--out", family(r)[0]), "input"),
    "stitch over a file": lambda r: (stitch(r, "--out", str(r / "notes.txt")), "is a file"),
    "stitch over a folder holding its inputs": lambda r: (stitch(r, "--out", str(r)), "holds"),
    "classify over an input's cfg.json": lambda r: (
        ["classify", *family(r), "--out", str(r / "family" / "topk-16" / "cfg.json")],
        "cfg.json",
    ),
    "classify over a directory": lambda r: (
        ["classify", *family(r), "--out", str(r / "thesis")],
        "directory",
    ),
    "classify under a file": lambda r: (
        ["classify", *family(r), "--out", str(r / "notes.txt" / "t.csv")],
        "not a directory",
    ),
    "classify to an empty path": lambda r: (["classify", *family(r), "--out", ""], "--out"),
    "classify over a previous table without --force": lambda r: (
        ["classify", *family(r), "--out", str(previous_table(r))],
        "--force",
    ),
    "classify over a user's csv with --force": lambda r: (
        ["classify", *family(r), "--out", str(r / "notes.txt"), "--force"],
        "notes.txt",
    ),
    "tree json and html at one path": lambda r: (
        ["tree", *family(r), "--all", "--out", str(r / "t.json"), "--html", str(r / "t.json")],
        "same path",
    ),
    "tree html over a user's file": lambda r: (
        ["tree", *family(r), "--all", "--out", str(r / "t.json"), "--html", str(r / "notes.txt")],
        "--html",
    ),
    "train over a user's folder": lambda r: (train(r, "--out", str(r / "thesis")), "thesis"),
    "train over its activations": lambda r: (train(r, "--out", str(r / "acts.npy")), "input"),
    "harvest over a user's folder": lambda r: (
        ["harvest", "--out", str(r / "thesis"), "--tokens", "10"],
        "thesis",
    ),
    "demo over a user's folder": lambda r: (["demo", "--out", str(r / "thesis")], "thesis"),
    # flags out of range
    "device bogus": lambda r: (
        ["classify", *family(r), "--out", "x.csv", "--device", "bogus"],
        "--device",
    ),
    "lr nan": lambda r: (train(r, "--out", str(r / "f"), "--lr", "nan"), "--lr"),
    "lr zero": lambda r: (train(r, "--out", str(r / "f"), "--lr", "0"), "--lr"),
    "target l0 negative": lambda r: (
        train(r, "--out", str(r / "f"), "--target-l0", "-5"),
        "--target-l0",
    ),
    "k zero": lambda r: (train(r, "--out", str(r / "f"), "--k", "0"), "--k"),
    "widths duplicate": lambda r: (
        ["train", "--acts", str(r / "acts.npy"), "--widths", "8,8", "--out", str(r / "f")],
        "--widths",
    ),
    "widths zero": lambda r: (
        ["train", "--acts", str(r / "acts.npy"), "--widths", "0", "--out", str(r / "f")],
        "--widths",
    ),
    "widths not numbers": lambda r: (
        ["train", "--acts", str(r / "acts.npy"), "--widths", "8,x", "--out", str(r / "f")],
        "--widths",
    ),
    "widths absurd": lambda r: (
        ["train", "--acts", str(r / "acts.npy"), "--widths", str(10**13), "--out", str(r / "f")],
        "--widths",
    ),
    "eval tokens negative": lambda r: (
        train(r, "--out", str(r / "f"), "--eval-tokens", "-1"),
        "--eval-tokens",
    ),
    "threads negative": lambda r: (
        ["harvest", "--out", str(r / "h"), "--threads", "-1"],
        "--threads",
    ),
    "context one": lambda r: (["harvest", "--out", str(r / "h"), "--context", "1"], "--context"),
    "tree threshold 2": lambda r: (
        ["tree", *family(r), "--all", "--out", str(r / "t.json"), "--threshold", "2"],
        "--threshold",
    ),
    "tree top negative": lambda r: (
        ["tree", *family(r), "--all", "--out", str(r / "t.json"), "--top", "-1"],
        "--top",
    ),
    "tree min size zero": lambda r: (
        ["tree", *family(r), "--all", "--out", str(r / "t.json"), "--min-size", "0"],
        "--min-size",
    ),
    "classify threshold 1.5": lambda r: (
        ["classify", *family(r), "--out", str(r / "t.csv"), "--threshold", "1.5"],
        "--threshold",
    ),
    "classify limit zero": lambda r: (
        ["classify", *family(r), "--out", str(r / "t.csv"), "--limit", "0"],
        "--limit",
    ),
    "stitch upto 0": lambda r: (stitch(r, "--out", str(r / "s"), "--upto", "0"), "--upto"),
    "stitch upto below the narrowest": lambda r: (
        stitch(r, "--out", str(r / "s"), "--upto", "4"),
        "--upto",
    ),
    "stitch sgd tokens zero": lambda r: (
        stitch(r, "--out", str(r / "s"), "--sgd-tokens", "0"),
        "--sgd-tokens",
    ),
    "unknown flag": lambda r: (["classify", *family(r), "--out", "t.csv", "--bogus"], "--bogus"),
    "missing command": lambda r: ([], "COMMAND"),
    # inputs
    "nan row in activations": lambda r: (
        ["classify", *family(r), "--acts", str(nan_acts(r)), "--out", str(r / "t.csv")],
        "row 123",
    ),
    "nan row in stitch": lambda r: (
        ["stitch", *family(r), "--acts", str(nan_acts(r)), "--out", str(r / "s")],
        "--skip-nonfinite",
    ),
    "nan row in train": lambda r: (
        ["train", "--acts", str(nan_acts(r)), "--widths", "8", "--k", "2", "--out", str(r / "f")],
        "nan.npy",
    ),
    "fifo as activations": lambda r: (
        ["classify", *family(r), "--acts", str(fifo(r / "p.npy")), "--out", str(r / "t.csv")],
        "p.npy",
    ),
    "fifo as cfg.json": lambda r: (
        ["classify", str(fifo_cfg(r)), family(r)[1], "--out", str(r / "t.csv")],
        "cfg.json",
    ),
    "directory as cfg.json": lambda r: (["info", str(dir_cfg(r))], "cfg.json"),
    "fifo as labels": lambda r: (
        [
            "tree",
            *family(r),
            "--all",
            "--out",
            str(r / "t.json"),
            "--labels",
            str(fifo(r / "labels.json")),
        ],
        "labels.json",
    ),
    "deeply nested labels": lambda r: (
        [
            "tree",
            *family(r),
            "--all",
            "--out",
            str(r / "t.json"),
            "--labels",
            str(_write(r / "deep.json", "[" * 100_000 + "]" * 100_000)),
        ],
        "deep.json",
    ),
    "deeply nested store metadata": lambda r: (
        ["classify", *family(r), "--acts", str(deep_store(r)), "--out", str(r / "t.csv")],
        "meta.json",
    ),
    "store declaring huge n_tokens": lambda r: (
        [
            "tree",
            *family(r),
            "--metric",
            "masked_cosine",
            "--acts",
            str(huge_store(r)),
            "--all",
            "--out",
            str(r / "t.json"),
        ],
        "n_tokens must be an integer",
    ),
    "zero-byte npy": lambda r: (
        ["classify", *family(r), "--acts", str(_touch(r / "empty.npy")), "--out", str(r / "t.csv")],
        "empty.npy",
    ),
    "complex activations": lambda r: (
        [
            "classify",
            *family(r),
            "--acts",
            str(save_npy("c.npy", np.ones((10, D_IN), dtype=np.complex64))(r)),
            "--out",
            str(r / "t.csv"),
        ],
        "c.npy",
    ),
    "activations of the wrong width": lambda r: (
        [
            "classify",
            *family(r),
            "--acts",
            str(save_npy("w.npy", np.ones((10, D_IN + 1), dtype=np.float32))(r)),
            "--out",
            str(r / "t.csv"),
        ],
        "d_in",
    ),
    "training on one row": lambda r: (
        [
            "train",
            "--acts",
            str(small_acts(1)(r)),
            "--widths",
            "8",
            "--k",
            "2",
            "--out",
            str(r / "f"),
        ],
        "rows1.npy",
    ),
}


def edited_cfg(name: str, **changes: object) -> Callable[[Path], str]:
    """An SAE directory whose cfg.json has ``changes`` (a value None deletes the key)."""

    def make(root: Path) -> str:
        sae_dir = root / name
        sg.save_sae(_sae(8, 0), sae_dir)
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (sae_dir / "cfg.json").write_text(json.dumps(cfg))
        return str(sae_dir)

    return make


def mp_sae(root: Path, **changes: object) -> str:
    sae_dir = root / "mp_sae"
    sg.save_sae(sg.SAE.from_decoder(torch.eye(D_IN)), sae_dir)
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    cfg.update(changes)
    (sae_dir / "cfg.json").write_text(json.dumps(cfg))
    return str(sae_dir)


def int8_weights(root: Path) -> str:
    from safetensors.torch import save_file

    sae = _sae(8, 0)
    sae_dir = root / "int8_sae"
    sg.save_sae(sae, sae_dir)
    weights = dict(sae.architecture.saelens_weights(sae))
    weights["W_dec"] = weights["W_dec"].to(torch.int8)
    save_file(
        {k: v.contiguous() for k, v in weights.items()}, str(sae_dir / "sae_weights.safetensors")
    )
    return str(sae_dir)


def width_zero(root: Path) -> str:
    from safetensors.torch import save_file

    sae_dir = root / "empty_sae"
    sae_dir.mkdir()
    tensors = {
        "W_enc": torch.zeros(D_IN, 0),
        "b_enc": torch.zeros(0),
        "W_dec": torch.zeros(0, D_IN),
        "b_dec": torch.zeros(D_IN),
    }
    save_file(tensors, str(sae_dir / "sae_weights.safetensors"))
    (sae_dir / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D_IN}))
    return str(sae_dir)


def deep_cfg(root: Path) -> str:
    sae_dir = root / "deep_sae"
    sg.save_sae(_sae(8, 0), sae_dir)
    (sae_dir / "cfg.json").write_text("[" * 100_000 + "]" * 100_000)
    return str(sae_dir)


def dictionary_learning(root: Path, config: object) -> str:
    sae_dir = root / "dl_sae"
    sae_dir.mkdir()
    W = torch.randn(8, D_IN)
    state = {
        "encoder.weight": W,
        "encoder.bias": torch.zeros(8),
        "decoder.weight": W.T.clone(),
        "b_dec": torch.zeros(D_IN),
        "k": torch.tensor(2),
    }
    torch.save(state, sae_dir / "ae.pt")
    (sae_dir / "config.json").write_text(json.dumps(config))
    return str(sae_dir)


def legacy_pickle(root: Path) -> str:
    import pickle

    sae_dir = root / "pickled_sae"
    sae_dir.mkdir()
    with open(sae_dir / "ae.pt", "wb") as f:
        pickle.dump({"encoder.weight": object()}, f)
    return str(sae_dir)


CONFIG_CASES: dict[str, Case] = {
    "cfg d_in contradicts the weights": lambda r: (
        ["info", edited_cfg("a", d_in=D_IN + 1)(r)],
        "d_in is 9 but the weights have 8",
    ),
    "cfg d_sae contradicts the weights": lambda r: (
        ["info", edited_cfg("b", d_sae=999)(r)],
        "d_sae is 999",
    ),
    "cfg apply_b_dec_to_input as a string": lambda r: (
        ["info", edited_cfg("c", apply_b_dec_to_input="false")(r)],
        "apply_b_dec_to_input",
    ),
    "cfg k true": lambda r: (["info", edited_cfg("d", k=True)(r)], "k must be an integer"),
    "cfg metadata of the wrong type": lambda r: (
        ["info", edited_cfg("e", metadata=[1])(r)],
        "metadata must be a JSON object",
    ),
    "cfg activation_fn_kwargs of the wrong type": lambda r: (
        [
            "info",
            edited_cfg(
                "f",
                architecture="standard",
                activation_fn="topk",
                k=None,
                activation_fn_kwargs=[2],
            )(r),
        ],
        "activation_fn_kwargs",
    ),
    "cfg matching-pursuit fields as strings": lambda r: (
        ["info", mp_sae(r, max_iterations="8")],
        "max_iterations must be an integer",
    ),
    "cfg matryoshka widths falling": lambda r: (
        ["info", edited_cfg("g", metadata={"matryoshka_widths": [8, 4]})(r)],
        "matryoshka_widths",
    ),
    "cfg deeply nested": lambda r: (["info", deep_cfg(r)], "cfg.json"),
    "int8 weights": lambda r: (["info", int8_weights(r)], "W_dec has dtype int8"),
    "width-0 SAE": lambda r: (["info", width_zero(r)], "width 0"),
    "dictionary_learning trainer not an object": lambda r: (
        ["info", dictionary_learning(r, {"trainer": [1]})],
        "trainer must be a JSON object",
    ),
    "dictionary_learning k of the wrong type": lambda r: (
        ["info", dictionary_learning(r, {"trainer": {"k": "two"}})],
        "k must be an integer",
    ),
    "pickled code in ae.pt": lambda r: (["info", legacy_pickle(r)], "weights_only"),
    "family with two SAEs of one width": lambda r: (["info", family(r)[0], family(r)[0]], "width"),
    "demo both retrained and quick": lambda r: (
        ["demo", "--retrain", "--quick", "--out", str(r / "demo")],
        "--quick: not allowed with argument --retrain",
    ),
}
CASES.update(CONFIG_CASES)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def deep_store(root: Path) -> Path:
    (root / "deep_store").mkdir()
    _write(root / "deep_store" / "meta.json", "[" * 100_000 + "]" * 100_000)
    return root / "deep_store"


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def check_case(case: Case, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``case`` from a fresh set-up under ``root``: exit 2, one line holding its string,
    no traceback, nothing on disk changed."""
    _setup(root)
    argv, needle = case(root)
    capsys.readouterr()
    before = _snapshot(root)
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err)
    assert len(lines) == 1, lines
    prefix = f"saegeo {argv[0]}: error:" if argv else "saegeo: error:"
    assert lines[0].startswith(prefix), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in captured.err
    assert _snapshot(root) == before


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_case(CASES[name], tmp_path, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine has no CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    code = main(["classify", "a", "b", "--out", str(tmp_path / "t.csv"), "--device", "cuda"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "CUDA is not available" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_is_refused_before_computing(tmp_path, capsys):
    _setup(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["classify", *family(tmp_path), "--out", str(locked / "t.csv")])
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "permission denied" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- what does work


def test_skip_nonfinite_reports_the_dropped_rows(tmp_path, capsys):
    _setup(tmp_path)
    bad = nan_acts(tmp_path)
    out = tmp_path / "t.csv"
    argv = ["classify", *family(tmp_path), "--acts", str(bad), "--out", str(out)]
    assert main([*argv, "--skip-nonfinite"]) == 0
    assert "skipped 1 rows with NaN or Inf values" in capsys.readouterr().out
    table = np.genfromtxt(out, delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert np.isfinite(table["delta_mse"]).all()


def test_force_replaces_a_previous_output(tmp_path, capsys):
    _setup(tmp_path)
    out = tmp_path / "s"
    assert main(stitch(tmp_path, "--out", str(out))) == 0
    first = _snapshot(out)
    assert main(stitch(tmp_path, "--out", str(out), "--retrain", "none")) == 2
    assert _snapshot(out) == first
    assert main(stitch(tmp_path, "--out", str(out), "--retrain", "none", "--force")) == 0
    assert json.loads((out / "report.json").read_text())["retrain"] == "none"


def test_written_json_holds_no_nan(tmp_path):
    _setup(tmp_path)
    out = tmp_path / "f"
    # No held-out tokens: the metrics are missing, written as null.
    assert main(train(tmp_path, "--out", str(out), "--eval-tokens", "0", "--tokens", "600")) == 0
    text = (out / "family.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


# --------------------------------------------------------------------------- interrupted writes


def _interrupt_on(monkeypatch, module, name: str, *, after: int = 0) -> None:
    """Make ``module.name`` raise KeyboardInterrupt on its call number ``after`` + 1."""
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _no_temporaries(root: Path) -> bool:
    return not [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


@pytest.mark.parametrize("previous", [False, True])
def test_interrupted_stitch_leaves_old_or_nothing(tmp_path, monkeypatch, previous):
    import saegeo.runtime.atomic

    _setup(tmp_path)
    out = tmp_path / "s"
    if previous:
        assert main(stitch(tmp_path, "--out", str(out), "--retrain", "none")) == 0
    before = _snapshot(tmp_path)
    with monkeypatch.context() as patch:
        # The SAE files are written; the report, the last file, is interrupted.
        _interrupt_on(patch, saegeo.runtime.atomic, "write_json")
        assert main(stitch(tmp_path, "--out", str(out), "--force")) == 130
    assert _snapshot(tmp_path) == before and _no_temporaries(tmp_path)
    assert main(stitch(tmp_path, "--out", str(out), "--force")) == 0
    assert json.loads((out / "report.json").read_text())["retrain"] == "exact"
    assert sg.load_sae(out).d_in == D_IN


@pytest.mark.parametrize("previous", [False, True])
def test_interrupted_train_never_mixes_runs(tmp_path, monkeypatch, previous):
    import saegeo.training.trainer

    _setup(tmp_path)
    out = tmp_path / "f"
    argv = ["train", "--acts", str(tmp_path / "acts.npy"), "--k", "2", "--tokens", "600"]
    argv += ["--out", str(out)]
    if previous:
        assert main([*argv, "--widths", "8,16", "--seed", "1"]) == 0
    before = _snapshot(tmp_path)
    with monkeypatch.context() as patch:
        _interrupt_on(patch, saegeo.training.trainer, "train_sae", after=1)  # the second member
        assert main([*argv, "--widths", "8,16", "--force"]) == 130
    assert _snapshot(tmp_path) == before and _no_temporaries(tmp_path)
    assert main([*argv, "--widths", "8,16", "--force"]) == 0
    doc = json.loads((out / "family.json").read_text())
    assert [m["name"] for m in doc["members"]] == ["topk-8", "topk-16"]
    assert doc["config"]["seed"] == 0
    assert sg.Family.load(out).widths == [8, 16]


@pytest.mark.parametrize("previous", [False, True])
def test_interrupted_tree_writes_both_files_or_neither(tmp_path, monkeypatch, previous):
    _setup(tmp_path)
    out, page = tmp_path / "t.json", tmp_path / "t.html"
    argv = ["tree", *family(tmp_path), "--all", "--out", str(out), "--html", str(page)]
    if previous:
        assert main([*argv, "--min-size", "1"]) == 0
    before = _snapshot(tmp_path)
    real_write = Path.write_text

    def interrupted(self, *args, **kwargs):
        if self.name.startswith(".t.html."):  # the page's temporary file, after the JSON's
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", interrupted)
        assert main([*argv, "--force"]) == 130
    assert _snapshot(tmp_path) == before and _no_temporaries(tmp_path)
    assert main([*argv, "--force"]) == 0
    assert json.loads(out.read_text())["schema"] == "saegeo.feature_forest.v1"
    assert 'content="saegeo"' in page.read_text()
