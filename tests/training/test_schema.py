"""The typed training schema: it types the composed config, the run reads it without casts, and the README's
key table and ``--help`` are generated from it."""

from pathlib import Path

import pytest

from archbench.train import main
from archbench.training.config import ConfigError, compose_config, to_container
from archbench.training.schema import README_BEGIN, README_END, RunConfig, TrainConfig, key_rows, key_table, run_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_composed_config_is_typed():
    run = run_config(to_container(compose_config(["recipe=digits", "train.lr=1", "train.grad_clip=2"])))
    assert isinstance(run, RunConfig) and isinstance(run.train, TrainConfig)
    assert isinstance(run.train.lr, float) and run.train.lr == 1.0 and run.train.grad_clip == 2.0
    assert isinstance(run.data.image_size, int) and run.backbone["name"] == "dis_t2"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("train.steps=many", "train.steps"), ("train.progress=maybe", "train.progress"), ("data.num_workers=1.5", "")],
)
def test_wrong_types_are_one_line_config_errors(override, fragment):
    with pytest.raises(ConfigError) as info:
        compose_config(["recipe=digits", override])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_run_config_refuses_a_badly_typed_record():
    config = to_container(compose_config(["recipe=digits"]))
    config["train"]["steps"] = "many"
    with pytest.raises(ConfigError, match="invalid configuration"):
        run_config(config)


def test_every_section_key_is_documented_and_in_the_readme():
    keys = [row[0] for row in key_rows()]
    assert {"train.lr", "data.name", "sample.sampler", "run_dir", "seed"} <= set(keys)
    text = README.read_text()
    table = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert table == key_table(), "regenerate the README's key table from archbench.training.schema.key_table()"


def test_help_lists_every_key(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(row[0] in out for row in key_rows())
