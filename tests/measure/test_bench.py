"""The mixer benchmark runs every mixer as a real layer in its own process and prints ratios to attention."""

from __future__ import annotations

from archbench.commands import bench


def test_mixers_benchmark_prints_every_mixer_and_ratio(capsys):
    assert bench.main(["mixers", "--lengths", "17", "--repeats", "1", "--rounds", "1", "--width", "32",
                       "--heads", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("17 ")]
    assert [row[1] for row in rows] == ["attention", "bimamba", "mamba2", "linear_attention"]
    assert rows[0][-3:-1] == ["1.000x", "1.000x"] and {row[-1] for row in rows} == {"1"}
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


def test_scan_benchmark_settles_threads_per_measurement_and_prints_the_count(capsys, monkeypatch):
    """threads=auto (the default) measures each (impl, L) in its spawned process at its own fastest count and
    prints that count; a bad value is one line."""
    from archbench.console.threads import candidate_counts

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the tests' pin would make auto take one thread
    assert bench.main(["scan", "lengths=9", "repeats=1", "batch=1", "d_inner=4", "state=2", "impls=fast"]) == 0
    out = capsys.readouterr().out
    assert "threads=auto" in out.splitlines()[0]
    row = [line.split() for line in out.splitlines() if line.strip().startswith("9 ")][0]
    assert row[1] == "fast" and int(row[-1]) in candidate_counts()
    assert bench.main(["scan", "lengths=9", "threads=many"]) == 1
    assert "threads must be 'auto' or a positive integer, got 'many'" in capsys.readouterr().err
