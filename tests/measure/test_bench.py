"""The mixer benchmark runs every mixer as a real layer in its own process and prints ratios to attention."""

from __future__ import annotations

from archbench.measure import bench


def test_mixers_benchmark_prints_every_mixer_and_ratio(capsys):
    assert bench.main(["mixers", "--lengths", "17", "--repeats", "1", "--rounds", "1", "--width", "32",
                       "--heads", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("17 ")]
    assert [row[1] for row in rows] == ["attention", "bimamba", "mamba2"]
    assert rows[0][-2:] == ["1.000x", "1.000x"]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0  # fwd and fwd+bwd milliseconds
