"""Outputs that commands claim: what appears at --out while a command runs survives, a second
writer is refused, --force deletes only what saegeo wrote, signals leave nothing behind, and
full disks, long names and odd paths are one line."""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_errors import _setup, _snapshot, family, stitch, train

import saegeo as sg
from saegeo.cli import main
from saegeo.runtime.claim import claim_output
from saegeo.runtime.outputs import Output


def _one_line(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    return lines[0]


def _leftovers(root: Path) -> list[str]:
    """Hidden temporaries, locks and set-aside outputs beside the outputs."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def _classify(root: Path, out: str) -> list[str]:
    return ["classify", *family(root), "--out", out]


def _after_first_call(monkeypatch, module, name: str, action) -> None:
    """Run ``action()`` after the first call of ``module.name`` returns (while the command
    still runs: before it puts its output in place)."""
    real = getattr(module, name)

    @functools.wraps(real)  # the parser reads the function's signature for its flags
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        action()
        return result

    monkeypatch.setattr(module, name, wrapper)


# --------------------------------------------------------------------------- races


def test_a_file_appearing_at_classify_out_survives(tmp_path, capsys, monkeypatch):
    import saegeo.effects.novelty

    _setup(tmp_path)
    out = tmp_path / "t.csv"
    _after_first_call(
        monkeypatch, saegeo.effects.novelty, "novelty_table", lambda: out.write_text("mine\n")
    )
    assert main(_classify(tmp_path, str(out))) == 2
    _one_line(capsys, "t.saegeo-new.csv")
    assert out.read_text() == "mine\n"
    assert (tmp_path / "t.saegeo-new.csv").read_text().startswith("feature,max_cos")
    assert _leftovers(tmp_path) == []


def test_a_folder_appearing_at_stitch_out_survives(tmp_path, capsys, monkeypatch):
    import saegeo.stitch.frankenstein

    _setup(tmp_path)
    out = tmp_path / "s"

    def user_folder() -> None:
        out.mkdir()
        (out / "mine.txt").write_text("mine")

    _after_first_call(monkeypatch, saegeo.stitch.frankenstein, "frankenstein", user_folder)
    assert main(stitch(tmp_path, "--out", str(out), "--retrain", "none")) == 2
    _one_line(capsys, "appeared or changed while saegeo ran")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert sg.load_sae(tmp_path / "s.saegeo-new").d_in == 8
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("previous", [False, True])
def test_a_folder_appearing_at_train_out_survives(tmp_path, capsys, monkeypatch, previous):
    import saegeo.training.trainer

    _setup(tmp_path)
    out = tmp_path / "f"
    argv = train(tmp_path, "--tokens", "600", "--out", str(out))
    if previous:  # the user moves the previous family away and puts a folder in its place
        assert main(argv) == 0
        argv.append("--force")

    def user_folder() -> None:
        if previous:
            out.rename(tmp_path / "moved")
        out.mkdir()
        (out / "mine.txt").write_text("mine")

    _after_first_call(monkeypatch, saegeo.training.trainer, "train_sae", user_folder)
    assert main(argv) == 2
    _one_line(capsys, "--out")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert sg.Family.load(tmp_path / "f.saegeo-new").widths == [8]
    assert _leftovers(tmp_path) == []


def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys):
    _setup(tmp_path)
    out = tmp_path / "t.csv"
    with claim_output(Output(out, "table")):  # a first run, holding --out
        assert main(_classify(tmp_path, str(out))) == 2
        _one_line(capsys, "another saegeo process")
    assert not out.exists()
    assert main(_classify(tmp_path, str(out))) == 0


# --------------------------------------------------------------------------- --force


def test_force_keeps_files_the_user_added_inside(tmp_path, capsys):
    _setup(tmp_path)
    out = tmp_path / "f"
    argv = train(tmp_path, "--tokens", "600", "--out", str(out))
    assert main(argv) == 0
    (out / "topk-8" / "notes.md").write_text("mine")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--force"]) == 2
    _one_line(capsys, "topk-8/notes.md, which saegeo did not write there and never deletes")
    assert _snapshot(tmp_path) == before


def test_force_replaces_only_saegeo_files_and_keeps_permissions(tmp_path):
    _setup(tmp_path)
    out = tmp_path / "s"
    assert main(stitch(tmp_path, "--out", str(out), "--retrain", "none")) == 0
    assert stat.S_IMODE((out / "sae_weights.safetensors").stat().st_mode) == 0o666 & ~_umask()
    out.chmod(0o700)
    table = tmp_path / "t.csv"
    assert main(_classify(tmp_path, str(table))) == 0
    table.chmod(0o600)
    assert main(stitch(tmp_path, "--out", str(out), "--force")) == 0
    assert main([*_classify(tmp_path, str(table)), "--force"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    assert json.loads((out / "report.json").read_text())["retrain"] == "exact"
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- signals

DRIVER = """
import pathlib, sys, time
import saegeo.training.trainer as trainer
real = trainer.train_sae
def slow(*args, **kwargs):
    result = real(*args, **kwargs)
    pathlib.Path(sys.argv[1]).write_text("training")
    time.sleep(120)
    return result
trainer.train_sae = slow
from saegeo.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _slow_train(root: Path, argv: list[str]) -> subprocess.Popen:
    """``saegeo ARGV`` in another process, whose training stops for two minutes after its first
    member; returned once it got there."""
    ready = root.parent / f"{root.name}.ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(ready), *argv],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), child.communicate()[1]
    return child


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_leaves_the_previous_output_and_no_temporaries(tmp_path, signum):
    _setup(tmp_path)
    out = tmp_path / "f"
    argv = train(tmp_path, "--tokens", "600", "--out", str(out))
    assert main([*argv, "--seed", "3"]) == 0
    before = _snapshot(tmp_path)
    child = _slow_train(tmp_path, [*argv, "--force"])
    assert _leftovers(tmp_path)  # the run holds --out: a lock and a temporary
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err
    lines = err.strip().splitlines()
    assert lines == [
        f"saegeo train: interrupted by {signal.Signals(signum).name}; no output was left "
        "half-written"
    ]
    assert _snapshot(tmp_path) == before and _leftovers(tmp_path) == []


def test_two_runs_on_one_new_out_the_second_is_refused(tmp_path, capsys):
    _setup(tmp_path)
    argv = train(tmp_path, "--tokens", "600", "--out", str(tmp_path / "f"))
    first = _slow_train(tmp_path, argv)
    try:
        assert main(argv) == 2
        _one_line(capsys, f"another saegeo process (process {first.pid}) is writing it")
    finally:
        first.terminate()
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
    assert not (tmp_path / "f").exists() and _leftovers(tmp_path) == []


def test_ignored_signals_stay_ignored():
    from saegeo.cli import stop_signals

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not on_term
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGHUP, previous)


# --------------------------------------------------------------------------- resources


def _full_disk_on(monkeypatch, prefix: str) -> None:
    """Writing any file whose name starts with ``prefix`` fails: no space left."""
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.startswith(prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("command", ["classify", "tree"])
def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch, command):
    _setup(tmp_path)
    before = _snapshot(tmp_path)
    if command == "classify":
        argv, name = _classify(tmp_path, str(tmp_path / "t.csv")), "t.csv"
    else:
        argv = ["tree", *family(tmp_path), "--root", "0/0", "--out", str(tmp_path / "t.json")]
        name = "t.json"
    _full_disk_on(monkeypatch, f".{name}.")
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_line(capsys, f"--out {tmp_path / name}: no space left on the device")
    assert line.startswith(f"saegeo {command}: error:")
    assert _snapshot(tmp_path) == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "out, needle",
    [
        (".", "is the current directory or one above it"),
        ("..", "holds the input"),  # the inputs are in the parent
        ("/", "holds the input"),
        ("t.csv/", "ends in a slash, which names a directory, but the output is a file"),
        ("x" * 256, "the name is 256 bytes long, longer than the file system allows (255)"),
        ("é" * 150, "the name is 300 bytes long"),
    ],
)
def test_odd_output_paths_are_one_line(tmp_path, capsys, monkeypatch, out, needle):
    _setup(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    before = _snapshot(tmp_path)
    commands = [_classify(tmp_path, out)]
    if not out.endswith("/") or out == "/":
        commands += [stitch(tmp_path, "--out", out), train(tmp_path, "--out", out)]
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 2
        _one_line(capsys, needle)
    assert _snapshot(tmp_path) == before


def test_the_longest_names_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    name = "t" * 251 + ".csv"  # 255 bytes: the temporary's name is shortened
    assert main(_classify(tmp_path, name)) == 0
    assert (tmp_path / name).read_text().startswith("feature,max_cos")
    out = "s" * 254
    assert main(stitch(tmp_path, "--out", out, "--retrain", "none")) == 0
    assert sg.load_sae(out).d_in == 8
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- demo


def test_demo_does_not_take_a_folder_with_a_settings_file(tmp_path, capsys):
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "settings.json").write_text(json.dumps({"multipliers": [1, 2], "lr": 3e-4}))
    before = _snapshot(tmp_path)
    assert main(["demo", "--out", str(mine)]) == 2
    _one_line(capsys, "exists and is not a saegeo demo directory")
    assert _snapshot(tmp_path) == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
