"""Issue 23.12: every long command shows one progress bar per phase, saying what it does, with an ETA; a draw shows
one bar over all its batches x steps (not a bar per batch restarting at 0); ``progress=false`` prints no bar; and
the bar never changes a number (samples stay bit-identical).

The commands run as real processes, so stderr is a pipe, as in a log: tqdm still writes its bar (every few
seconds at most, and its final state when the phase ends), and the tests read the bar states back from it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from archbench.console.progress import LOG_MININTERVAL, TTY_MININTERVAL, progress, shared_progress

# One bar state as tqdm prints it: "DESC:  50%|#####     | 1/2 [00:00<00:01,  1.23unit/s]".
STATE = re.compile(r"^(?P<desc>.+?): +\d+%\|[^|]*\| (?P<n>\d+)/(?P<total>\d+) \[(?P<times>[^\]]*)\]")


def bar_states(stderr: str) -> list[tuple[str, int, int, str]]:
    """Every bar state written to ``stderr``: (description, done, total, the [elapsed<eta, rate] field)."""
    states = []
    for part in re.split(r"[\r\n]", stderr):
        found = STATE.match(part.strip())
        if found:
            states.append((found["desc"], int(found["n"]), int(found["total"]), found["times"]))
    return states


def assert_one_bar_per_phase(stderr: str, phases: dict[str, int]) -> dict[str, list[tuple[int, str]]]:
    """``phases``: the start of each phase's description -> its total. Each phase is one bar: it starts at 0 once,
    counts up without restarting and ends full; there is no other bar. Returns each phase's (done, desc) states."""
    by_phase: dict[str, list[tuple[int, str]]] = {phase: [] for phase in phases}
    for desc, n, total, times in bar_states(stderr):
        phase = [p for p in phases if desc.startswith(p)]
        assert len(phase) == 1, f"a bar no phase owns: {desc!r}\n{stderr}"
        assert total == phases[phase[0]], (desc, total, phases)
        assert "<" in times, times  # elapsed<ETA
        by_phase[phase[0]].append((n, desc))
    for phase, states in by_phase.items():
        counts = [n for n, _ in states]
        assert counts, f"no bar for {phase!r}:\n{stderr}"
        assert counts.count(0) == 1 and counts[0] == 0, f"{phase!r} restarts at 0: {counts}"
        assert counts == sorted(counts) and counts[-1] == phases[phase], f"{phase!r}: {counts}"
    return by_phase


def run(*argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_report_flops_counts_under_one_bar_naming_each_backbone():
    shown = run("archbench.report", "flops", "backbones=dit_t2,dis_t2", "format=json")
    states = assert_one_bar_per_phase(shown.stderr, {"count": 2})["count"]
    descriptions = [desc for _, desc in states]
    assert "counting FLOPs of dit_t2 (1/2)" in descriptions and "counting FLOPs of dis_t2 (2/2)" in descriptions
    assert descriptions.index("counting FLOPs of dit_t2 (1/2)") < descriptions.index("counting FLOPs of dis_t2 (2/2)")
    quiet = run("archbench.report", "flops", "backbones=dit_t2,dis_t2", "format=json", "progress=false")
    assert quiet.stderr == "" and bar_states(quiet.stderr) == []
    assert json.loads(quiet.stdout) == json.loads(shown.stdout)  # the same counts, with or without the bar


def test_report_summary_shows_its_phases_in_one_bar():
    shown = run("archbench.report", "summary", "backbone=dit_t2", "depth=1")
    states = assert_one_bar_per_phase(shown.stderr, {"summary of dit_t2": 3})["summary of dit_t2"]
    assert {desc for _, desc in states} >= {"summary of dit_t2: building it", "summary of dit_t2: counting FLOPs"}
    quiet = run("archbench.report", "summary", "backbone=dit_t2", "depth=1", "progress=false")
    assert quiet.stderr == "" and quiet.stdout == shown.stdout


def test_a_bad_setting_fails_in_one_line_before_any_bar():
    done = subprocess.run([sys.executable, "-m", "archbench.report", "flops", "backbones=dit_t2,dit_t4",
                           "image_size=6"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and bar_states(done.stderr) == []
    assert done.stderr.count("\n") == 1 and "dit_t4: image_size 6 must be" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A 1-step U-Net run on digits and a digits CNN trained by the CLI, in a temporary cache (as
    tests/evaluation/test_evaluate.py)."""
    from archbench.commands import eval as ev
    from archbench.train import main as train_main

    root = tmp_path_factory.mktemp("progress-run")
    cache = root / "cache"
    assert ev.main(["train-features", "dataset=digits", f"cache={cache}", "epochs=1"]) == 0
    assert train_main(["recipe=digits", "backbone=unet_t", "train.steps=1", "train.ckpt_every=1",
                       "train.batch_size=4", "sample.num_samples=2", "sample.steps=1", "train.progress=false",
                       "train.logger=none", f"run_dir={root / 'run'}"]) == 0
    return root / "run", cache


def test_eval_shows_one_bar_per_phase_and_none_with_progress_false(digits_run, tmp_path):
    run_dir, cache = digits_run
    args = [f"run_dir={run_dir}", "num_samples=12", "steps=3", "batch_size=4", f"cache={cache}"]
    records = {}
    for shown in (True, False):
        shutil.rmtree(cache / "reference", ignore_errors=True)  # so that the reference statistics are computed
        out = tmp_path / f"progress-{shown}.json"
        done = run("archbench.eval", *args, f"out={out}", f"progress={str(shown).lower()}")
        records[shown] = json.loads(out.read_text())
        if not shown:
            assert bar_states(done.stderr) == [] and "%|" not in done.stderr, done.stderr
            continue
        reference = records[shown]["reference_items"]
        states = assert_one_bar_per_phase(done.stderr, {
            f"reference statistics: digits test {reference} images": reference,
            "sampling 12 images (3 batches x 3 steps)": 9,  # one bar over 3 batches x 3 steps, not 3 bars of 3
            "scoring 12 samples with digits_cnn": 12,
        })
        assert len(states) == 3
        order = [done.stderr.index(phase) for phase in states]
        assert order == sorted(order)  # reference, then sampling, then scoring
    assert {k: v for k, v in records[True].items() if k != "seconds"} == \
        {k: v for k, v in records[False].items() if k != "seconds"}


@pytest.mark.parametrize(("objective", "sampler", "steps"), [("ddpm", "ddim", 4), ("flow", "heun", 3)])
def test_sampling_under_one_bar_gives_the_same_samples(objective, sampler, steps, capsys):
    import archbench
    from archbench.diffusion import create_diffusion
    from archbench.sampling.grid import generate

    torch.manual_seed(0)
    model = archbench.build("dit_t2", image_size=8, in_channels=1, num_classes=3,
                            learn_sigma=objective == "ddpm")
    diffusion = create_diffusion(objective, T=50, learn_sigma=objective == "ddpm")
    settings = dict(num_samples=5, shape=(1, 8, 8), labels=torch.arange(5) % 3, sampler=sampler, steps=steps,
                    seed=3, batch_size=2)
    quiet = generate(model, diffusion, progress=False, **settings)
    assert capsys.readouterr().err == ""
    with shared_progress("sampling 5 images", 3, True):
        shown = generate(model, diffusion, progress=True, **settings)
    err = capsys.readouterr().err
    assert torch.equal(quiet, shown)
    states = bar_states(err)
    assert states and {desc for desc, *_ in states} == {desc for desc, *_ in states[:1]}  # one bar
    loop = int(re.search(r"\(3 batches x (\d+) steps\)", states[0][0])[1])
    assert [n for _, n, _, _ in states][0] == 0 and states[-1][1:3] == (3 * loop, 3 * loop)
    with shared_progress("sampling 5 images", 3, False):  # a silenced bar silences the samplers too
        silent = generate(model, diffusion, progress=True, **settings)
    assert capsys.readouterr().err == "" and torch.equal(silent, quiet)


def test_the_bar_is_rate_limited_off_a_terminal(capsys):
    with progress(1000, "stepping", unit="step") as bar:  # capsys's stderr is not a terminal
        assert bar.mininterval == LOG_MININTERVAL > TTY_MININTERVAL
        for _ in range(1000):
            bar.update(1)
    states = bar_states(capsys.readouterr().err)
    assert states[0][1] == 0 and states[-1][1] == 1000 and len(states) <= 3  # start, end: no flood of lines
    with progress(10, "quiet", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
