"""Sample sets for FID-50k: chunk seeding, a real 2-rank torchrun against one process, resume, merge, the writer.

DDPM is used throughout because it draws fresh noise at every step: the hardest case for making a sample
independent of which process drew it and in which order.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from train_support import REPO, cli_env, one_thread, run_train  # noqa: F401

import archbench
from archbench.diffusion import create_diffusion
from archbench.sample import main
from archbench.sampling.grid import generate
from archbench.sampling.npz import Streamed, iter_npz_rows, npz_array_info, write_npz
from archbench.sampling.shards import (
    SampleSetSpec,
    ShardError,
    check_part,
    merge_parts,
    part_path,
    parts_dir,
    read_set_meta,
    write_sample_set,
)

SET = ["num_samples=10", "chunk_size=4", "sampler=ddpm", "steps=3", "progress=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("shards") / "run"
    assert run_train(run_dir, "train.steps=2") == 0
    return run_dir


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = archbench.build("dit_t2", image_size=8, in_channels=1, num_classes=3, depth=2).eval()
    return net, create_diffusion("ddpm", learn_sigma=True, T=50)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "archbench.sample", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cli_env(), cwd=REPO)


def test_default_seeding_is_one_stream_as_before(tiny):
    """Without per_chunk_seeds, generate feeds every batch from one generator seeded once (the old results)."""
    net, objective = tiny
    labels = torch.tensor([0, 1, 2, 0, 1])
    got = generate(net, objective, num_samples=5, shape=(1, 8, 8), labels=labels, sampler="ddpm", steps=3,
                   seed=7, batch_size=2)
    generator = torch.Generator().manual_seed(7)
    want = torch.cat([
        objective.sample(net, (len(y), 1, 8, 8), sampler="ddpm", steps=3, model_kwargs={"y": y},
                         generator=generator, null_class=net.null_class)
        for y in labels.split(2)
    ])
    assert torch.equal(got, want)


def test_a_chunk_is_the_same_whatever_was_drawn_before_it(tiny):
    net, objective = tiny
    kwargs = dict(shape=(1, 8, 8), sampler="ddpm", steps=3, seed=3, batch_size=4, per_chunk_seeds=True)
    labels = torch.arange(12) % 3
    whole = generate(net, objective, num_samples=12, labels=labels, **kwargs)
    last_first = [generate(net, objective, num_samples=4, labels=labels[i:i + 4], first_index=i, **kwargs)
                  for i in (8, 4, 0)]
    assert torch.equal(whole, torch.cat(last_first[::-1]))
    assert not torch.equal(whole[:4], whole[4:8])  # chunks get different noise
    other_seed = generate(net, objective, num_samples=4, labels=labels[:4], **{**kwargs, "seed": 4})
    assert not torch.equal(other_seed, whole[:4])
    with pytest.raises(ValueError, match="multiple of batch_size"):
        generate(net, objective, num_samples=4, labels=None, first_index=2, **kwargs)


def test_two_ranks_under_torchrun_write_the_same_file_as_one_process(trained, tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    assert main([f"run_dir={trained}", f"out={one}", *SET]) == 0
    proc = _torchrun(f"run_dir={trained}", f"out={two}", *SET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1: chunk" not in proc.stderr  # rank 1 logs warnings only
    assert proc.stdout.count("wrote ") == 1 and "3 chunks of 4" in proc.stdout
    assert _sha(one) == _sha(two)  # byte for byte, timestamps included
    arrays = np.load(two, allow_pickle=False)
    assert arrays["arr_0"].shape == (10, 8, 8, 1) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].dtype == np.int64 and arrays["arr_1"].tolist() == [i % 10 for i in range(10)]
    assert len(np.unique(arrays["arr_0"].reshape(10, -1), axis=0)) == 10
    meta = read_set_meta(two)
    assert meta["num_samples"] == 10 and meta["sampling"]["sampler"] == "ddpm" and meta["chunk_size"] == 4
    assert not parts_dir(two).exists()  # merged, then removed


def test_a_smaller_set_is_a_prefix_and_the_chunk_size_is_part_of_the_set(trained, tmp_path):
    assert main([f"run_dir={trained}", f"out={tmp_path / 'ten.npz'}", *SET]) == 0
    assert main([f"run_dir={trained}", f"out={tmp_path / 'six.npz'}", *SET, "num_samples=6"]) == 0
    assert main([f"run_dir={trained}", f"out={tmp_path / 'c5.npz'}", *SET, "chunk_size=5"]) == 0
    ten, six = np.load(tmp_path / "ten.npz")["arr_0"], np.load(tmp_path / "six.npz")["arr_0"]
    assert np.array_equal(ten[:6], six)
    assert not np.array_equal(np.load(tmp_path / "c5.npz")["arr_0"], ten)


def test_resume_keeps_good_parts_and_redraws_damaged_ones(trained, tmp_path, capsys):
    out = tmp_path / "set.npz"
    args = [f"run_dir={trained}", f"out={out}", *SET, "num_samples=20", "keep_parts=true"]
    assert main(args) == 0
    reference, parts = _sha(out), parts_dir(out)
    files = [part_path(parts, k) for k in range(5)]
    spec_meta = read_set_meta(out)
    out.unlink()
    files[1].unlink()  # never written
    files[2].write_bytes(files[2].read_bytes()[:200])  # truncated
    raw = bytearray(files[3].read_bytes())
    raw[raw.find(b"\x93NUMPY") + 140] ^= 0xFF  # a flipped byte in the image data (past arr_0's header): CRC

    files[3].write_bytes(bytes(raw))
    with np.load(files[4]) as z:  # a valid file of another set (other fingerprint)
        other = {key: z[key] for key in z.files}
    other["fingerprint"] = np.asarray("0" * 32)
    write_npz(files[4], other)
    (parts / ".chunk_000001.npz.tmp-999").write_bytes(b"half")  # a killed writer's leftover
    kept = files[0].stat()
    capsys.readouterr()

    proc = _torchrun(*args)  # resumed with another number of ranks
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 drawn now, 1 already drawn" in proc.stdout
    for fragment in ("unreadable", "drawn with other settings"):
        assert fragment in proc.stderr
    assert _sha(out) == reference and read_set_meta(out) == spec_meta
    after = files[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # the good part was not redrawn
    assert not list(parts.glob(".chunk_*"))

    written = os.stat(out).st_mtime_ns
    assert main(args) == 0  # complete: nothing is drawn, the file is not rewritten
    assert "0 drawn now, 5 already drawn" in capsys.readouterr().out
    assert os.stat(out).st_mtime_ns == written and _sha(out) == reference


def test_merge_refuses_a_part_damaged_after_drawing(tiny, tmp_path):
    net, objective = tiny
    spec = SampleSetSpec(num_samples=6, shape=(1, 8, 8), labels=(0, 1, 2), sampling={"sampler": "ddpm", "steps": 2},
                         chunk_size=4)
    out = tmp_path / "s.npz"
    result = write_sample_set(net, objective, spec, out, keep_parts=True)
    assert result.merged and (result.drawn, result.reused, result.num_chunks) == (2, 0, 2)
    parts = parts_dir(out)
    assert check_part(part_path(parts, 0), spec, 0) is None
    assert check_part(part_path(parts, 0), spec, 1) == "holds another chunk"
    other_labels = SampleSetSpec(**{**spec.__dict__, "labels": (2, 1, 0)})
    assert check_part(part_path(parts, 0), other_labels, 0) == "drawn with other settings"
    part_path(parts, 1).write_bytes(b"not a zip")
    with pytest.raises(ShardError, match=r"chunk_000001.npz: unreadable .*run again to redraw it"):
        merge_parts(spec, parts, tmp_path / "merged.npz")
    assert not (tmp_path / "merged.npz").exists() and not list(tmp_path.glob(".merged*"))
    assert np.load(out)["arr_1"].tolist() == [0, 1, 2, 0, 1, 2]


def test_spec_and_world_size_errors(tiny, tmp_path):
    net, objective = tiny
    with pytest.raises(ShardError, match="1- or 3-channel images"):
        SampleSetSpec(num_samples=4, shape=(4, 8, 8))
    with pytest.raises(ShardError, match="unknown sampling settings"):
        SampleSetSpec(num_samples=4, shape=(1, 8, 8), sampling={"eta": 1})
    spec = SampleSetSpec(num_samples=4, shape=(1, 8, 8))
    with pytest.raises(ShardError, match="needs the process group"):
        write_sample_set(net, objective, spec, tmp_path / "a.npz", rank=1, world_size=2)
    with pytest.raises(ShardError, match="written as .npz"):
        write_sample_set(net, objective, spec, tmp_path / "a.png")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["format=npz", "out=x.png"], "does not end with .npz"),
        (["format=png", "out=x.npz"], "give out=<name>.png"),
        (["out=x.npz", "batch_size=8"], "batch_size does not apply to an .npz sample set"),
        (["format=tiff"], "format must be one of auto, png, npz"),
        (["out=x.npz", "chunk_size=0"], "chunk_size must be >= 1, got 0"),
        (["out=x.npz", "keep_parts=maybe"], "keep_parts must be true or false"),
    ],
)
def test_bad_set_arguments_one_line(trained, capsys, args, fragment):
    assert main([f"run_dir={trained}", "progress=false", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_a_png_grid_is_not_drawn_by_several_ranks(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([f"run_dir={trained}", f"out={tmp_path / 'g.png'}", "progress=false"]) == 1
    assert "under torchrun write a sample set: out=PATH.npz" in capsys.readouterr().err


def test_npz_writer_streams_reproducibly_and_checks_the_row_count(tmp_path):
    images = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    labels = np.arange(5, dtype=np.int64)
    a = write_npz(tmp_path / "a.npz", {"arr_0": Streamed(images.shape, np.uint8, [images[:2], images[2:]]),
                                      "arr_1": labels})
    b = write_npz(tmp_path / "b.npz", {"arr_0": images, "arr_1": labels})
    assert a.read_bytes() == b.read_bytes()
    assert np.array_equal(np.load(a)["arr_0"], images) and npz_array_info(a, "arr_0") == ((5, 2, 2, 3), np.uint8)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)  # another tool's compressed file reads the same
    assert np.array_equal(np.concatenate(list(iter_npz_rows(tmp_path / "c.npz", "arr_0", 2, limit=4))), images[:4])
    with pytest.raises(ValueError, match="wrote 2 rows of an array declared with 5"):
        write_npz(tmp_path / "d.npz", {"arr_0": Streamed(images.shape, np.uint8, [images[:2]])})
    with pytest.raises(ValueError, match="does not fit"):
        write_npz(tmp_path / "d.npz", {"arr_0": Streamed(images.shape, np.uint8, [images.astype(np.int16)])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz"]  # no temporary left


def test_format_npz_without_out_writes_into_the_run(trained, capsys):
    assert main([f"run_dir={trained}", "format=npz", "num_samples=3", "chunk_size=2", "steps=1", "seed=-4",
                 "progress=false"]) == 0
    written = trained / "samples" / "samples_step0000002_n3_seed-4.npz"
    assert f"wrote {written}" in capsys.readouterr().out
    assert np.load(written)["arr_0"].shape == (3, 8, 8, 1) and read_set_meta(written)["seed"] == -4
