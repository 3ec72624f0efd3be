"""The report command and library: argument parsing, output formats, clean errors, and a tiny scaling run."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import pytest

import archbench
from archbench.commands import report as report_command
from archbench.console.args import guess_value
from archbench.console.errors import UsageError
from archbench.measure import report, scaling


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = report_command.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("text", "value"),
    [("32", 32), ("0.1", 0.1), ("true", True), ("False", False), ("none", None), ("abc", "abc"), ("1,2,2", (1, 2, 2))],
)
def test_guess_value(text, value):
    assert guess_value(text) == value


def test_resolve_backbones_keeps_order_and_expands_patterns():
    assert report.resolve_backbones("dit_t2,dis_t*") == ["dit_t2", "dis_t2", "dis_t4"]
    with pytest.raises(UsageError, match="no registered backbone matches"):
        report.resolve_backbones("nothing_*")


def test_help_lists_every_command(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert all(command in out for command in ("flops", "summary", "scaling", "resolutions"))
    code, out, _ = run_main(capsys, "scaling", "--help")  # one report's keys: name, type, default, doc
    assert code == 0 and "flops keys" not in out
    assert any(line.split()[:3] == ["resolutions", "int,...", "16,32,64,128"] for line in out.splitlines())


@pytest.fixture(scope="module")
def flop_outputs() -> dict[str, str]:
    return {fmt: report.flops_table(["dit_t2", "dis_t2"], {}, fmt) for fmt in ("md", "csv", "json")}


def _params(name: str) -> int:
    return sum(p.numel() for p in archbench.build(name).parameters())


def test_flops_json(flop_outputs):
    rows = json.loads(flop_outputs["json"])["rows"]
    assert [row["name"] for row in rows] == ["dit_t2", "dis_t2"]
    for row in rows:
        assert {"name", "params", "gmacs", "gflops", "tokens"} <= set(row)
        assert row["params"] == _params(row["name"])
        assert row["gflops"] == pytest.approx(2 * row["gmacs"])


def test_flops_csv_and_md_agree_with_json(flop_outputs):
    rows = {row["name"]: row for row in json.loads(flop_outputs["json"])["rows"]}
    for row in csv.DictReader(io.StringIO(flop_outputs["csv"])):
        assert int(row["params"]) == rows[row["name"]]["params"]
        assert float(row["gmacs"]) == pytest.approx(rows[row["name"]]["gmacs"])
    lines = flop_outputs["md"].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:6] == ["name", "family", "params", "tokens", "gmacs", "gflops"]
    body = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(body) == set(rows)
    assert f"{rows['dis_t2']['params']:,}" in body["dis_t2"]


def test_flops_applies_build_overrides(capsys):
    code, out, _ = run_main(capsys, "flops", "backbones=dit_t2", "image_size=16", "format=json")
    assert code == 0
    assert json.loads(out)["rows"][0]["tokens"] == 64


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flops", "backbones=dit_t2,dis_t2", "mlp_ratio=2"], "not accepted by every selected backbone"),
        (["flops", "backbones=dit_t2", "image_size=15"], "multiple of patch_size"),
        (["flops", "backbones=dit_t9"], "unknown backbone"),
        (["flops"], "backbones="),
        (["frobnicate"], "expected a command"),
        (["flops", "backbones=dit_t2", "format=xml"], "format must be one of md, csv, json, got 'xml'"),
        (["flops", "preset=paper", "image_size=16"], "preset=paper fixes the setting; drop image_size"),
        (["summary", "depth=2"], "missing backbone="),
        (["summary", "backbone=dit_t2", "depth=0"], "depth must be >= 1, got 0"),
        (["scaling", "resolutions=16,x"], "resolutions must be an integer, got 'x'"),
        (["scaling", "backbones=dit_t2", "image_size=16"], "image_size: use resolutions="),
        (["kernels", "device=cpu"], "unknown key 'device'"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    code, _, err = run_main(capsys, *argv)
    assert code == 1  # the project's exit code for an expected failure
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_key_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-m", "archbench.report", "flops", "backbones=dit_t2", "bogus=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown key(s) bogus" in lines[0]
    assert "valid keys" in lines[0] and "backbones" in lines[0] and "image_size" in lines[0]


def test_summary_shows_torchinfo_table_and_our_count(capsys):
    code, out, _ = run_main(capsys, "summary", "backbone=dit_t2", "depth=1")
    assert code == 0
    assert f"Total params: {_params('dit_t2'):,}" in out
    assert "Estimated Total Size" in out
    assert "dit_t2:" in out and "GMACs" in out


def test_scaling_tiny_run_writes_csv_and_png(capsys, tmp_path, monkeypatch):
    """threads=auto (the default, unpinned here) times every backbone of a resolution at one settled count."""
    from archbench.console.threads import candidate_counts

    pytest.importorskip("matplotlib")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code, out, err = run_main(
        capsys, "scaling", "backbones=dis_t2,dit_t2", "resolutions=16,32", "repeats=1", f"out={tmp_path}"
    )
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "scaling.csv").open()))
    assert [(r["backbone"], int(r["resolution"])) for r in rows] == [
        ("dis_t2", 16), ("dit_t2", 16), ("dis_t2", 32), ("dit_t2", 32)
    ]
    for row in rows:
        assert not row["error"]
        assert all(float(row[k]) > 0 for k in ("gmacs", "fwd_ms", "fwdbwd_ms", "fwdbwd_mem_mb"))
    assert [int(r["tokens"]) for r in rows] == [66, 64, 258, 256]
    for resolution in (16, 32):
        counts = {int(r["threads"]) for r in rows if int(r["resolution"]) == resolution}
        assert len(counts) == 1 and counts <= set(candidate_counts())
    assert "threads=auto" in err
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    assert (tmp_path / "crossover.csv").exists()
    assert "Crossover" in out and "dis_t2 vs dit_t2" in out


def _rows(times: dict[str, list[float]], tokens: list[int]) -> list[dict]:
    rows = []
    for name, values in times.items():
        family = name.split("_")[0]
        for i, (t, ms) in enumerate(zip(tokens, values, strict=True)):
            rows.append({"backbone": name, "family": family, "resolution": 16 * 2**i, "tokens": t, "fwd_ms": ms})
    return rows


def test_crossover_is_interpolated_in_log_tokens():
    # DiS/DiT time ratio 2 at 100 tokens, 0.5 at 400: log-linear crossing at 200 tokens.
    rows = _rows({"dis_x": [2.0, 2.0], "dit_x": [1.0, 4.0]}, [100, 400])
    (found,) = scaling.crossovers(rows)
    assert found["status"] == "crosses"
    assert found["tokens"] == pytest.approx(200)
    assert "~200 tokens" in scaling.describe_crossover(found)


def test_crossover_none_within_range_and_faster_throughout():
    (never,) = scaling.crossovers(_rows({"dis_x": [3.0, 4.0], "dit_x": [1.0, 2.0]}, [64, 256]))
    assert never["status"] == "none within range" and never["tokens"] is None
    assert "no crossover within range" in scaling.describe_crossover(never)
    (always,) = scaling.crossovers(_rows({"dis_x": [0.5, 0.5], "uvit_x": [1.0, 2.0]}, [64, 256]))
    assert always["status"] == "faster throughout"
    assert math.isclose(always["ratio_at_max"], 0.25)


@pytest.mark.slow
def test_paper_preset_reproduces_dit(capsys):
    code, out, _ = run_main(capsys, "flops", "preset=paper", "format=json")
    assert code == 0
    payload = json.loads(out)
    dit = [row for row in payload["rows"] if row["table"] == "dit"]
    assert len(dit) == 6 and all(abs(row["diff_pct"]) < 0.5 for row in dit)
    assert {row["name"] for row in payload["rows"] if row["table"] == "dis"} == set(report.DIS_FAMILY)
    assert payload["notes"]
