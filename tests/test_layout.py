"""The layering contract (import-linter, configured in pyproject.toml) holds, and breaks when it should."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("diffusion", "data", "training", "sampling", "evaluation", "measure", "study")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree at ``root`` (its pyproject.toml, its packages first on the path)."""
    pytest.importorskip("importlinter")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def _copy_tree(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in ("archbench", "backbones"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_every_stage_is_a_package():
    for stage in STAGES:
        assert (REPO / "archbench" / stage / "__init__.py").is_file(), stage
    assert (REPO / "backbones" / "registry.py").is_file() and (REPO / "backbones" / "ssm" / "__init__.py").is_file()
    loose = sorted(p.name for p in (REPO / "archbench").glob("*.py"))
    entry_modules = ["__init__.py", "bench.py", "ci.py", "eval.py", "export.py", "report.py", "sample.py", "train.py",
                     "zoo.py"]
    assert loose == entry_modules, "new code goes into its stage's package, not beside the packages"
    assert (REPO / "archbench" / "commands" / "__init__.py").is_file() and (REPO / "archbench" / "console").is_dir()


def test_stage_modules_hold_no_command_line():
    """Every command's parsing and printing lives in archbench/commands; a stage module has no main() and no
    argument parser, and a package __main__ is a shim that calls its command."""
    stage_files = [p for stage in STAGES for p in (REPO / "archbench" / stage).glob("*.py")]
    for path in stage_files:
        text = path.read_text()
        assert "\ndef main(" not in text and "argparse" not in text and "sys.argv" not in text, path
        if path.name == "__main__.py":
            assert f"from archbench.commands.{path.parent.name} import main" in text, path


def test_the_contracts_hold():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("backbones/dit.py", "import archbench.training.loop", "backbones never import archbench"),
        ("archbench/diffusion/schedules.py", "import archbench.training.config", "archbench stages are layered"),
        ("archbench/training/loop.py", "from archbench.evaluation import frechet", "archbench stages are layered"),
        ("archbench/measure/flops.py", "import archbench.data", "archbench stages are layered"),
        ("archbench/evaluation/evaluate.py", "import archbench.study.runner", "archbench stages are layered"),
        ("archbench/study/runner.py", "import archbench.commands.study", "archbench stages are layered"),
        ("archbench/data/catalog.py", "import archbench.commands.data", "archbench stages are layered"),
        ("archbench/console/args.py", "import archbench.measure.report", "archbench stages are layered"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tmp_path, module, forbidden, contract):
    copy = _copy_tree(tmp_path)
    path = copy / module
    path.write_text(path.read_text() + f"\n{forbidden}  # added by the test\n")
    proc = _lint_imports(copy)
    assert proc.returncode != 0, proc.stdout
    broken = [line for line in proc.stdout.splitlines() if " BROKEN" in line]  # "BROKEN (2 ignored imports)"
    assert any(line.startswith(contract) for line in broken), proc.stdout
    assert forbidden.split()[1] in proc.stdout  # the report names the offending import
