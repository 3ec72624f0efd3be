"""``train.logger``: TensorBoard and Weights & Biases (offline) get the same scalars as metrics.jsonl, and the grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_support import one_thread, run_train  # noqa: F401

STEPS = ["train.steps=3", "train.sample_every=3"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_the_metrics_rows_and_the_grid(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb"
    assert run_train(run_dir, *STEPS, "train.logger=tensorboard") == 0
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    expected = [(row["step"], row["loss"]) for row in _metrics(run_dir)]
    assert [s for s, _ in losses] == [s for s, _ in expected]
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [image.step for image in events.Images("samples")] == [3]


def _wandb_records(path: Path) -> list:
    """The records of an offline ``.wandb`` file: a 7-byte header, then LevelDB-style log blocks of 32 KiB
    whose chunks (7-byte header: crc32, length, type 1=full 2=first 3=middle 4=last) join into protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, block, pos, chunks, records = path.read_bytes(), 32768, 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block trailer / padding
            continue
        chunks += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_holds_the_same_scalars_and_the_grid(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "wb"
    assert run_train(run_dir, *STEPS, "train.logger=wandb", "train.project=archbench-test") == 0
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    (offline,) = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    records = _wandb_records(offline / f"run-{run_id}.wandb")
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "archbench-test" and run.run_id == run_id
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    rows = _metrics(run_dir)
    assert [h["_step"] for h in history] == [row["step"] for row in rows]
    assert [h["train/loss"] for h in history] == pytest.approx([row["loss"] for row in rows], rel=1e-6)
    assert history[-1]["samples/_type"] == "image-file"
    assert list((offline / "files" / "media" / "images").glob("samples_3_*.png"))
    # Resuming the training run continues the same W&B run id.
    assert run_train(run_dir, "train.steps=5", "train.sample_every=0", "train.logger=wandb") == 0
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id


def test_unknown_or_missing_logger_is_one_line(tmp_path, capsys):
    assert run_train(tmp_path / "bad", "train.logger=mlflow") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("archbench.train: error: unknown train.logger 'mlflow'")
    assert "tensorboard, wandb, none" in err[-1]
