"""``python -m archbench.bench step``: argument checking, and a real (tiny) interleaved run with its outputs."""

from __future__ import annotations

import json

import pytest

from archbench.console.args import parse_args
from archbench.console.errors import UsageError
from archbench.training.step_bench import StepConfig, format_rows, run_step_bench


def parse_step_args(argv: list[str]) -> StepConfig:
    return parse_args(StepConfig, argv).check()


def test_arguments_are_parsed_and_checked():
    cfg = parse_step_args(["backbones=dit_t2,dis_t2", "compile=true", "batch=4", "precision=bf16"])
    assert cfg.backbones == ("dit_t2", "dis_t2") and cfg.compile and cfg.batch == 4 and cfg.precision == "bf16"
    assert parse_step_args(["steps=7"]).timed_steps == 7  # the older name (benchmarks/gpu.sh) of timed_steps
    for bad, message in [
        (["backbones=nope_t2"], "unknown backbones"),
        (["precision=fp16"], "precision must be one of fp32, bf16"),
        (["batch=0"], "batch must be >= 1"),
        (["compile=maybe"], "compile must be true or false"),
        (["diffusion=nope"], "diffusion must be one of ddpm"),
        (["speed=fast"], "unknown key 'speed'; valid keys: backbones"),
        (["threads=0"], "threads must be 'auto' or a positive integer, got '0'"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_step_args(bad)


def test_a_tiny_interleaved_run_reports_every_backbone(tmp_path):
    cfg = StepConfig(backbones=("dit_t2", "dis_t2"), batch=2, image_size=8, timed_steps=1, warmup=1, rounds=1,
                     grad_checkpoint=True, out=str(tmp_path / "step.json"))
    rows = run_step_bench(cfg)
    assert [r["backbone"] for r in rows] == ["dit_t2", "dis_t2"]
    assert rows[0]["time_ratio"] == 1.0 and all(r["step_ms"] > 0 and r["img_per_s"] > 0 for r in rows)
    table = format_rows(cfg, rows)
    assert "grad_checkpoint=True" in table and "dis_t2" in table
    assert all(r["threads"] == 1 for r in rows)  # threads=auto under the CPU clock times one thread


def test_auto_threads_under_the_wall_clock_settle_each_backbone_on_its_own_steps(monkeypatch):
    from archbench.console.threads import candidate_counts

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # spawned measuring processes inherit the environment
    cfg = StepConfig(backbones=("dit_t2",), batch=2, image_size=8, timed_steps=1, warmup=0, rounds=1, timer="wall")
    rows = run_step_bench(cfg)
    assert rows[0]["threads"] in candidate_counts() and "threads=auto" in format_rows(cfg, rows)


def test_cli_writes_json_and_plot(tmp_path, capsys):
    from archbench.bench import main

    out = tmp_path / "bench" / "step.json"
    assert main(["step", "backbones=dit_t2", "batch=2", "image_size=8", "steps=1", "warmup=1", "rounds=1",
                 f"out={out}"]) == 0
    assert "dit_t2" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["rows"][0]["backbone"] == "dit_t2" and out.with_suffix(".png").stat().st_size > 0
