"""The mixer benchmark runs every mixer as a real layer in its own process and prints ratios to attention."""

from __future__ import annotations

from archbench.commands import bench


def test_mixers_benchmark_prints_every_mixer_and_ratio(capsys):
    assert bench.main(["mixers", "--lengths", "17", "--repeats", "1", "--rounds", "1", "--width", "32",
                       "--heads", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("17 ")]
    assert [row[1] for row in rows] == ["attention", "bimamba", "mamba2", "linear_attention"]
    assert rows[0][-2:] == ["1.000x", "1.000x"]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0  # fwd and fwd+bwd milliseconds


def test_scan_benchmark_key_value_and_flag_spellings_agree(capsys):
    """The README's key=value grammar and the older --flag spelling run the same measurement."""
    assert bench.main(["scan", "lengths=9", "repeats=1", "batch=1", "d_inner=4", "state=2", "threads=1",
                       "impls=fast"]) == 0
    by_key = capsys.readouterr().out
    assert bench.main(["scan", "--lengths", "9", "--repeats=1", "--batch", "1", "--d-inner", "4", "--state", "2",
                       "--threads", "1", "--impls", "fast"]) == 0
    by_flag = capsys.readouterr().out
    assert by_key.splitlines()[0] == by_flag.splitlines()[0]
    assert "N=2" in by_key and "d_inner=4" in by_key
    assert [line.split()[:2] for line in by_key.splitlines() if line.strip().startswith("9 ")][0] == ["9", "fast"]
