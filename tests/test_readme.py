"""The README's backbone table is generated from the registry and must not drift from it."""

from pathlib import Path

from archbench.measure.zoo import README_BEGIN, README_END, zoo_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_backbone_table_is_current():
    text = README.read_text()
    table = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert table == zoo_markdown(), "regenerate with: python -m archbench.zoo --readme"


def test_readme_gives_the_ci_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest" in README.read_text() and "python -m pytest" in ci
