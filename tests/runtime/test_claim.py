"""Claimed outputs in the library: save_sae and train_family never replace what saegeo did not
write, keep what appears while they write, and say so in one line."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from helpers.sae import random_sae

import saegeo as sg
import saegeo.acts.store
import saegeo.formats.sae_files
import saegeo.formats.saelens
import saegeo.runtime.claim
from saegeo.errors import SaegeoError
from saegeo.runtime.atomic import ResourceError, temp_prefix
from saegeo.runtime.claim import claim_output, rename_noreplace
from saegeo.runtime.outputs import Output, OutputError, saegeo_entries


@pytest.fixture
def sae() -> sg.SAE:
    return random_sae(8, "relu", seed=0)


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_a_folder_holding_a_users_file_is_refused_and_kept(sae, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "precious.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"^path='.*notes': exists and is not a saegeo SAE"):
            sg.save_sae(sae, f"{notes}/", overwrite=overwrite)
    assert _names(notes) == ["precious.txt"]
    assert _names(tmp_path) == ["notes"]  # no temporary, no lock left


def test_a_family_is_not_an_sae_and_a_file_is_not_a_folder(sae, tmp_path):
    run = sg.train_family(
        torch.randn(600, 16, generator=torch.Generator().manual_seed(0)),
        [8],
        sg.TrainConfig(arch="topk", k=2, tokens=600, eval_tokens=0, progress=False),
        out_dir=tmp_path / "family",
    )
    before = sorted(str(p) for p in (tmp_path / "family").rglob("*"))
    with pytest.raises(OutputError, match="not a saegeo SAE directory"):
        sg.save_sae(run.family[0], tmp_path / "family", overwrite=True)
    assert sorted(str(p) for p in (tmp_path / "family").rglob("*")) == before
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputError, match="is a file, but the output is a directory"):
        sg.save_sae(sae, tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "mine"


def test_overwrite_replaces_only_a_previous_sae_and_keeps_its_mode(sae, tmp_path):
    path = sg.save_sae(sae, tmp_path / "sae")
    assert stat.S_IMODE((path / "sae_weights.safetensors").stat().st_mode) == _usual(0o666)
    with pytest.raises(OutputError, match="pass overwrite=True to replace it"):
        sg.save_sae(sae, path)
    path.chmod(0o700)
    other = random_sae(12, "topk", seed=1)
    sg.save_sae(other, path, overwrite=True)
    assert sg.load_sae(path).width == 12
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert _names(tmp_path) == ["sae"]
    # A file of the user's inside a previous SAE directory is never deleted.
    (path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt, which saegeo did not write"):
        sg.save_sae(sae, path, overwrite=True)
    assert (path / "notes.txt").read_text() == "mine" and sg.load_sae(path).width == 12


def test_older_saegeo_saes_are_replaced_and_saelens_ones_are_not(sae, tmp_path):
    import json

    path = sg.save_sae(sae, tmp_path / "lens")
    cfg = json.loads((path / "cfg.json").read_text())
    del cfg["metadata"]["saved_by"]  # as saegeo wrote SAEs before it marked them
    (path / "cfg.json").write_text(json.dumps(cfg))
    sg.save_sae(sae, path, overwrite=True)
    cfg["metadata"]["sae_lens_training_version"] = "6.5.0"  # as SAELens writes them
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(OutputError, match="not a saegeo SAE directory"):
        sg.save_sae(sae, path, overwrite=True)


@pytest.mark.parametrize("intruder", ["folder", "file", "empty folder"])
def test_what_appears_while_saving_stays_and_the_result_is_kept_beside(
    sae, tmp_path, monkeypatch, intruder
):
    final = tmp_path / "out"
    real = saegeo.formats.sae_files.write_saelens

    def slow_write(sae, path):
        real(sae, path)
        if intruder == "file":
            final.write_text("mine")
        else:
            final.mkdir()
            if intruder == "folder":
                (final / "mine.txt").write_text("mine")

    monkeypatch.setattr(saegeo.formats.sae_files, "write_saelens", slow_write)
    with pytest.raises(OutputError, match=r"appeared or changed while saegeo ran.*out\.saegeo-new"):
        sg.save_sae(sae, final)
    kept = tmp_path / "out.saegeo-new"
    assert sg.load_sae(kept).width == sae.width
    if intruder == "file":
        assert final.read_text() == "mine"
    else:
        assert _names(final) == ([] if intruder == "empty folder" else ["mine.txt"])
    assert _names(tmp_path) == ["out", "out.saegeo-new"]


def test_a_previous_output_changed_meanwhile_is_kept(sae, tmp_path, monkeypatch):
    final = sg.save_sae(sae, tmp_path / "out")
    real = saegeo.formats.sae_files.write_saelens

    def add_a_file(sae, path):
        real(sae, path)
        (final / "added.txt").write_text("mine")

    monkeypatch.setattr(saegeo.formats.sae_files, "write_saelens", add_a_file)
    with pytest.raises(OutputError, match="appeared or changed"):
        sg.save_sae(random_sae(12, "relu", seed=2), final, overwrite=True)
    assert (final / "added.txt").read_text() == "mine" and sg.load_sae(final).width == 8
    assert sg.load_sae(tmp_path / "out.saegeo-new").width == 12


def test_a_second_writer_is_refused_while_the_first_holds_the_path(sae, tmp_path):
    final = tmp_path / "out"
    with claim_output(Output(final, "sae", "path")) as first:
        with pytest.raises(OutputError, match=r"another saegeo process \(process \d+\)"):
            sg.save_sae(sae, final)
        (first.path / "cfg.json").write_text("{}")
        first.commit()
    assert _names(tmp_path) == ["out"]


def test_a_lock_left_by_a_killed_process_is_taken_over(sae, tmp_path):
    final = tmp_path / "out"
    prefix = temp_prefix(final)
    dead = _dead_pid()
    (tmp_path / f"{prefix}saegeo-lock").write_text(f"{dead} {os.uname().nodename}\n")
    (tmp_path / f"{prefix}abcd1234.tmp").mkdir()  # its unfinished temporary
    sg.save_sae(sae, final)
    assert _names(tmp_path) == ["out"]


def test_odd_and_long_paths_are_one_line(sae, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for odd in (".", "..", "/", "sub/..", "./"):
        with pytest.raises(OutputError, match="current directory|root directory"):
            sg.save_sae(sae, odd)
    with pytest.raises(OutputError, match="the name is 256 bytes long"):
        sg.save_sae(sae, "x" * 256)
    longest = "é" * 127  # 254 bytes: the temporary's name would pass the limit unshortened
    sg.save_sae(sae, longest)
    assert sg.load_sae(longest).width == sae.width
    assert _names(tmp_path) == sorted(["sub", longest])


def test_a_full_disk_is_one_error_naming_the_path(sae, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(saegeo.formats.saelens, "save_file", full)
    with pytest.raises(ResourceError, match=r"^path='.*out': no space left on the device"):
        sg.save_sae(sae, tmp_path / "out")
    assert _names(tmp_path) == []

    class SafetensorError(Exception):  # how safetensors reports it: not an OSError
        pass

    def full_rust(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, ... })(os error 28)")

    monkeypatch.setattr(saegeo.formats.saelens, "save_file", full_rust)
    with pytest.raises(SaegeoError, match="no space left"):
        sg.save_sae(sae, tmp_path / "out")
    assert _names(tmp_path) == []


def test_a_full_store_is_one_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = sg.ShardWriter(tmp_path / "store", 4, shard_tokens=10)
    monkeypatch.setattr(saegeo.acts.store, "save_file", full)
    with pytest.raises(ResourceError, match=r"shard_00000\.safetensors: no space left"):
        writer.add(torch.randn(12, 4))
    assert _names(tmp_path / "store") == ["meta.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_really_full_disk(sae, tmp_path):
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        big = random_sae(4096, "relu", seed=0)  # 1 MB of weights
        with pytest.raises(ResourceError, match="no space left on the device"):
            sg.save_sae(big, disk / "sae")
        assert _names(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("renameat2", [True, False])
def test_rename_noreplace_refuses_even_an_empty_directory(tmp_path, monkeypatch, renameat2):
    if not renameat2:  # as on a system or file system without it
        monkeypatch.setattr(saegeo.runtime.claim, "_renameat2", lambda source, target: False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    (tmp_path / "f").write_text("new")
    (tmp_path / "g").write_text("old")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "f", tmp_path / "g")
    rename_noreplace(tmp_path / "f", tmp_path / "h")
    assert (tmp_path / "g").read_text() == "old" and (tmp_path / "h").read_text() == "new"


def test_saegeo_entries_of_a_family(tmp_path):
    out = tmp_path / "family"
    sg.train_family(
        torch.randn(600, 16, generator=torch.Generator().manual_seed(0)),
        [8, 16],
        sg.TrainConfig(arch="topk", k=2, tokens=600, eval_tokens=0, progress=False),
        out_dir=out,
    )
    (out / "topk-8" / "notes.md").write_text("mine")
    ours, foreign = saegeo_entries(out, "family")
    assert [p.relative_to(out).as_posix() for p in foreign] == ["topk-8/notes.md"]
    assert {p.relative_to(out).as_posix() for p in ours} == {
        "family.json",
        "metrics.csv",
        "topk-8",
        "topk-8/cfg.json",
        "topk-8/sae_weights.safetensors",
        "topk-16",
        "topk-16/cfg.json",
        "topk-16/sae_weights.safetensors",
    }


def _usual(mode: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _dead_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_save_html_replaces_only_its_own_pages(tmp_path):
    import plotly.graph_objects as go

    from saegeo.viz.figures import figure_page, save_html

    page = "<html><head></head><body>a plot</body></html>"
    (tmp_path / "mine.html").write_text("my page")
    with pytest.raises(OutputError, match="not a saegeo HTML page"):
        save_html(page, tmp_path / "mine.html", overwrite=True)
    assert (tmp_path / "mine.html").read_text() == "my page"
    ours = save_html(figure_page(go.Figure()), tmp_path / "a.html")
    with pytest.raises(OutputError, match="pass overwrite=True"):
        save_html(page, ours)
    save_html(page, ours, overwrite=True)
    assert ours.read_text() == page


def test_a_signal_during_the_final_renames_waits_for_them(sae, tmp_path, monkeypatch):
    import signal

    from saegeo.cli import Interrupted, stop_signals

    path = sg.save_sae(sae, tmp_path / "out")
    real = saegeo.runtime.claim._try_rename

    def rename_after_a_signal(source, target):
        os.kill(os.getpid(), signal.SIGTERM)  # between moving the old output aside and the new in
        return real(source, target)

    monkeypatch.setattr(saegeo.runtime.claim, "_try_rename", rename_after_a_signal)
    with stop_signals(), pytest.raises(Interrupted):
        sg.save_sae(random_sae(12, "relu", seed=3), path, overwrite=True)
    assert sg.load_sae(path).width == 12
    assert _names(tmp_path) == ["out"]
