"""A sample command's outputs are tied to the weights they came from and never replaced by something else unasked.

Issue 23 items 2 and 3: a set drawn from a run that was then deleted and retrained (another seed and learning
rate) is refused, not passed off as "nothing to draw"; the same weights stay idempotent across processes and
containers; ``out=X.png`` never silently replaces a sample set ``X.npz``; ``overwrite=true`` replaces and says so.
Real training runs of a tiny model, real files and, for the command, real processes.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from train_support import one_thread, run_cli, run_train  # noqa: F401

from archbench.sample import main
from archbench.sampling.outputs import read_meta, weights_checksum
from archbench.sampling.shards import parts_dir, read_set_meta

SET = ["num_samples=8", "chunk_size=4", "sampler=ddpm", "steps=2", "progress=false"]
GRID = ["num_samples=4", "steps=2", "progress=false", "labels=0,1"]
PROCEED = "give another out= or overwrite=true to replace it"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z["arr_0"]


def _refusal(proc) -> str:
    """The one stderr line of a refused command (exit 1, no traceback, nothing else printed)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("archbench.sample: error: ") and not proc.stdout, proc.stderr
    return lines[0]


def _refused_in_process(capsys, *args: str) -> str:
    """The one stderr line of a command refused in this process (exit 1, nothing else printed)."""
    capsys.readouterr()
    assert main(list(args)) == 1
    printed = capsys.readouterr()
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archbench.sample: error: ") and not printed.out, printed
    return lines[0]


def _ema_checksum(run_dir) -> str:
    from archbench.training.runs import load_ema_model

    return weights_checksum(load_ema_model(run_dir, None, torch.device("cpu")).net)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("outputs") / "run"
    assert run_train(run_dir, "train.steps=2") == 0
    return run_dir


def test_a_retrained_run_is_refused_and_overwrite_draws_afresh(tmp_path, capsys):
    run_dir, out, partial = tmp_path / "run", tmp_path / "set.npz", tmp_path / "partial.npz"
    assert run_train(run_dir, "train.steps=2") == 0
    old = _ema_checksum(run_dir)
    for path, extra in ((out, []), (partial, ["keep_parts=true"])):
        proc = run_cli("archbench.sample", f"run_dir={run_dir}", f"out={path}", *SET, *extra)
        assert proc.returncode == 0, proc.stderr
    assert read_set_meta(out)["weights"] == old  # the full SHA-256, as computed in another process
    partial.unlink()  # an interrupted draw: its finished chunks are left in partial.npz.parts
    parts = sorted(parts_dir(partial).iterdir())
    before, old_images = _sha(out), _images(out)

    shutil.rmtree(run_dir)  # the same path and step, retrained with another seed and learning rate
    assert run_train(run_dir, "train.steps=2", "seed=1", "train.lr=0.003") == 0
    new = _ema_checksum(run_dir)
    assert new != old

    # the checks in-process from here (the checksums were already compared across processes above)
    line = _refused_in_process(capsys, f"run_dir={run_dir}", f"out={out}", *SET)
    assert line == (f"archbench.sample: error: {out} holds a sample set of 8 samples drawn from other weights "
                    f"(sha256 {old[:12]}; these weights: {new[:12]}); {PROCEED}")
    assert _sha(out) == before and not parts_dir(out).exists()  # untouched, nothing drawn

    line = _refused_in_process(capsys, f"run_dir={run_dir}", f"out={partial}", *SET)  # resuming
    assert line == (f"archbench.sample: error: {parts_dir(partial)} holds 2 chunk(s) drawn from other weights "
                    f"(sha256 {old[:12]}; these weights: {new[:12]}): resuming would mix two models' samples in "
                    "one set; give another out= or overwrite=true to redraw them")
    assert sorted(parts_dir(partial).iterdir()) == parts and not partial.exists()

    assert main([f"run_dir={run_dir}", f"out={out}", *SET, "overwrite=true"]) == 0
    printed = capsys.readouterr()
    assert (f"[archbench] overwrite=true: replacing {out}, which holds a sample set of 8 samples drawn from other "
            f"weights (sha256 {old[:12]}; these weights: {new[:12]})") in printed.err.splitlines()
    assert "8 samples in 2 chunks of 4: 2 drawn now, 0 already drawn" in printed.out
    assert read_set_meta(out)["weights"] == new and not np.array_equal(_images(out), old_images)

    assert main([f"run_dir={run_dir}", f"out={partial}", *SET, "overwrite=true"]) == 0
    assert (f"[archbench] overwrite=true: redrawing the 2 chunk(s) of {parts_dir(partial)} drawn from other "
            f"weights (sha256 {old[:12]})") in capsys.readouterr().err.splitlines()
    assert _sha(partial) == _sha(out)  # every chunk redrawn from the new weights: the same set, byte for byte


def test_the_same_weights_are_nothing_to_draw_from_any_process_path_or_container(trained, tmp_path, capsys):
    from archbench.export import main as export

    out = tmp_path / "set.npz"
    args = [f"out={out}", *SET]
    first = run_cli("archbench.sample", f"run_dir={trained}", *args)
    assert first.returncode == 0, first.stderr
    written, digest = out.stat().st_mtime_ns, _sha(out)
    assert read_set_meta(out)["weights"] == _ema_checksum(trained)  # this process computes what that one stored
    again = run_cli("archbench.sample", f"run_dir={trained}", *args)  # the checksum is stable across processes
    assert again.returncode == 0, again.stderr
    assert f"{out} already holds these 8 samples; nothing to draw" in again.stderr
    assert "0 drawn now, 2 already drawn" in again.stdout

    moved = tmp_path / "moved_run"  # another path: the set is identified by its weights, not path and step
    shutil.copytree(trained, moved)
    folder = tmp_path / "pretrained"  # another container of the same EMA weights
    assert export([f"run_dir={trained}", f"out={folder}"]) == 0
    for source in (moved, folder):
        capsys.readouterr()
        assert main([f"run_dir={source}", *args]) == 0
        assert f"{out} already holds these 8 samples; nothing to draw" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == written and _sha(out) == digest


def test_a_grid_never_silently_replaces_a_sample_set(trained, tmp_path):
    png, npz = tmp_path / "x.png", tmp_path / "x.npz"
    assert run_cli("archbench.sample", f"run_dir={trained}", f"out={npz}", *SET).returncode == 0
    before = _sha(npz)

    line = _refusal(run_cli("archbench.sample", f"run_dir={trained}", f"out={png}", *GRID))
    assert line == (f"archbench.sample: error: {npz} holds a sample set of 8 samples, not the .npz of a PNG grid; "
                    f"{PROCEED}")
    assert _sha(npz) == before and not png.exists()

    proc = run_cli("archbench.sample", f"run_dir={trained}", f"out={png}", *GRID, "overwrite=true")
    assert proc.returncode == 0, proc.stderr
    assert (f"[archbench] overwrite=true: replacing {npz}, which holds a sample set of 8 samples, not the .npz of "
            "a PNG grid") in proc.stderr.splitlines()
    assert f"wrote {png} and {npz}" in proc.stdout
    assert _images(npz).shape == (4, 8, 8, 1) and read_set_meta(npz)["format"] == "archbench-grid/1"
    assert read_meta(png) == read_set_meta(npz)  # the PNG records the same meta in a text chunk


def test_grid_outputs_of_other_settings_or_kind_are_refused_in_process(trained, tmp_path, capsys):
    png, npz = tmp_path / "g.png", tmp_path / "g.npz"
    base = [f"run_dir={trained}", f"out={png}", *GRID]
    assert main(base) == 0
    grid = _sha(png), _sha(npz)
    capsys.readouterr()
    assert main(base) == 0  # the same grid again: rewritten, identical
    assert (_sha(png), _sha(npz)) == grid and "overwrite" not in capsys.readouterr().err

    assert main([*base, "seed=1"]) == 1
    line = capsys.readouterr().err.strip()
    assert line == (f"archbench.sample: error: {png} holds a PNG grid of 4 samples drawn with other settings (seed: "
                    f"0, now 1); {npz} holds the .npz of a PNG grid of 4 samples drawn with other settings (seed: 0, "
                    "now 1); give another out= or overwrite=true to replace them")
    assert (_sha(png), _sha(npz)) == grid

    # a set over a grid's .npz, and a grid over another tool's .npz or image
    assert main([f"run_dir={trained}", f"out={npz}", *SET]) == 1
    assert capsys.readouterr().err.strip() == (f"archbench.sample: error: {npz} holds the .npz of a PNG grid of 4 "
                                               f"samples, not a sample set; {PROCEED}")
    foreign = tmp_path / "f.png"
    np.savez(foreign.with_suffix(".npz"), arr_0=np.zeros((2, 8, 8, 1), np.uint8))
    foreign.write_bytes(b"not an image")
    assert main([f"run_dir={trained}", f"out={foreign}", *GRID]) == 1
    assert capsys.readouterr().err.strip() == (
        f"archbench.sample: error: {foreign} holds a .png without archbench metadata; {foreign.with_suffix('.npz')} "
        "holds an .npz without archbench metadata (keys: arr_0); give another out= or overwrite=true to replace them")
    assert main([f"run_dir={trained}", f"out={foreign}", *GRID, "overwrite=true"]) == 0
    assert read_meta(foreign)["format"] == "archbench-grid/1"


def test_a_set_of_other_settings_or_more_samples_is_refused_and_a_larger_one_extends(trained, tmp_path, capsys):
    out = tmp_path / "s.npz"
    base = [f"run_dir={trained}", f"out={out}", *SET]
    assert main(base) == 0
    digest = _sha(out)
    capsys.readouterr()
    assert main([*base, "steps=3"]) == 1
    assert capsys.readouterr().err.strip() == (f"archbench.sample: error: {out} holds a sample set of 8 samples drawn "
                                               f"with other settings (sampling.steps: 2, now 3); {PROCEED}")
    assert main([*base, "num_samples=4"]) == 1
    assert capsys.readouterr().err.strip() == (f"archbench.sample: error: {out} holds a sample set of 8 samples with "
                                               f"these settings, more than num_samples=4; {PROCEED}")
    assert _sha(out) == digest
    small = _images(out)
    assert main([*base, "num_samples=12"]) == 0  # extends it: the 8 samples are a prefix of the 12
    assert f"{out} holds a sample set of 8 samples; extending it to 12 samples" in capsys.readouterr().err
    assert np.array_equal(_images(out)[:8], small)
