"""Every ``python -m archbench.X`` is a thin module in archbench/commands: its --help is generated from its key
dataclass, and the documented spellings (key=value, the older --flags, package __main__s) work as real processes."""

from __future__ import annotations

import importlib

import pytest
from train_support import REPO, run_cli

from archbench.console.args import keys

# command -> (argv for its help, the dataclasses whose keys it must list)
HELP = {
    "sample": (["--help"], ["archbench.training.sample_run:SampleRequest"]),
    "eval": (["--help"], ["archbench.evaluation.evaluate:EvalRequest"]),
    "export": (["--help"], ["archbench.commands.export:ExportArgs"]),
    "zoo": (["--help"], ["archbench.commands.zoo:ZooArgs"]),
    "ci": (["fid", "--help"], ["archbench.commands.ci:FidArgs"]),
    "data": (["--help"], ["archbench.commands.data:EncodeArgs"]),
    "study": (["--help"], ["archbench.commands.study:StudyArgs"]),
    "bench": (["--help"], ["archbench.commands.bench:ScanArgs", "archbench.commands.bench:MixersArgs",
                           "archbench.training.step_bench:StepConfig"]),
    "report": (["--help"], ["archbench.commands.report:FlopsArgs", "archbench.commands.report:SummaryArgs",
                            "archbench.commands.report:ScalingArgs"]),
}


def _schema(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("command", sorted(HELP))
def test_help_lists_every_key_with_type_and_default(capsys, command):
    argv, schemas = HELP[command]
    assert importlib.import_module(f"archbench.commands.{command}").main(argv) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()}
    for spec in schemas:
        for key in keys(_schema(spec)):
            assert key.name in listed or key.name.upper() in listed, (command, key.name)


@pytest.mark.parametrize(("argv", "message"), [
    (["archbench.data", "encode", "vea=x", "out=y"], "unknown key 'vea' (did you mean 'vae'?)"),
    (["archbench.ci", "fid", "--work-dir"], "--work-dir needs a value"),
    (["archbench.ci", "fid", "steps=5"], "unknown key 'steps' (did you mean 'train_steps'?)"),
    (["archbench.bench", "step", "steps=0"], "timed_steps must be >= 1, got 0"),
    (["archbench.bench", "scan", "--timer", "gpu"], "timer must be one of wall, cpu, got 'gpu'"),
    (["archbench.sample", "run_dir=x", "labels=1,a"], "labels must be an integer, got 'a'"),
    (["archbench.export", "run_dir=x"], "give run_dir=<training run> (or checkpoint=<file>) and out="),
    (["archbench.study", "ci", "--plna"], "unknown option '--plna' (did you mean '--plan'?)"),
])
def test_a_bad_argument_is_one_line_and_exit_code_1(argv, message):
    proc = run_cli(*argv)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith(f"{argv[0]}: error: "), proc.stderr


def test_zoo_readme_flag_rewrites_the_table_in_a_real_process(tmp_path):
    from archbench.measure.zoo import README_BEGIN, README_END, zoo_markdown

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nstale\n{README_END}\noutro\n")
    proc = run_cli("archbench.zoo", "--readme", str(readme))
    assert proc.returncode == 0, proc.stderr
    assert readme.read_text() == f"intro\n{README_BEGIN}\n{zoo_markdown()}\n{README_END}\noutro\n"
    proc = run_cli("archbench.zoo", "dit_t*")  # the positional pattern
    assert proc.returncode == 0 and "`dit_t2`" in proc.stdout and "`dis_t2`" not in proc.stdout


def test_package_mains_run_their_commands():
    proc = run_cli("archbench.data", "list")
    assert proc.returncode == 0 and "fashion_mnist" in proc.stdout
    proc = run_cli("archbench.study", "--help")
    assert proc.returncode == 0 and "usage: python -m archbench.study STUDY" in proc.stdout and "ci" in proc.stdout
    assert (REPO / "archbench" / "study" / "__main__.py").read_text().count("\n") <= 6
