"""``python -m archbench.sample``: EMA weights of the newest checkpoint -> PNG grid + npz."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from train_support import one_thread, run_cli, run_train  # noqa: F401

from archbench.sample import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sample") / "run"
    assert run_train(run_dir, "train.steps=3") == 0
    return run_dir


def test_grid_and_npz(trained, tmp_path):
    out = tmp_path / "grid.png"
    args = [f"run_dir={trained}", "num_samples=6", "sampler=ddim", "steps=3", "cfg_scale=1.5", f"out={out}",
            "labels=0,1,2", "seed=0", "progress=false"]
    assert main(args) == 0
    arrays = np.load(out.with_suffix(".npz"))
    assert arrays["arr_0"].shape == (6, 8, 8, 1) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].tolist() == [0, 1, 2, 0, 1, 2]
    assert Image.open(out).size[0] > 8
    # same seed, same images
    again = tmp_path / "again.png"
    assert main([*args[:5], f"out={again}", *args[6:]]) == 0
    assert np.array_equal(np.load(again.with_suffix(".npz"))["arr_0"], arrays["arr_0"])


def test_single_class_and_default_output(trained):
    assert main([f"run_dir={trained}", "num_samples=4", "class=3", "steps=2", "progress=false"]) == 0
    written = trained / "samples" / "sample_step0000003.npz"
    assert np.load(written)["arr_1"].tolist() == [3, 3, 3, 3]
    assert written.with_suffix(".png").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["num_samples=4", "class=10"], "labels must be integers in [0, 9]"),
        (["sampler=euler"], "unknown sampler 'euler'"),
        (["bogus=1"], "unknown key 'bogus'"),
        (["labels=1", "class=2"], "not both"),
    ],
)
def test_bad_arguments_one_line(trained, capsys, args, fragment):
    assert main([f"run_dir={trained}", "steps=2", "progress=false", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_missing_run_dir_real_process(tmp_path):
    proc = run_cli("archbench.sample", f"run_dir={tmp_path / 'none'}")
    assert proc.returncode == 1 and "no checkpoints under" in proc.stderr and "Traceback" not in proc.stderr


def test_latent_samples_are_kept_as_floats(tmp_path):
    import torch

    from archbench.sampling.grid import save_grid, save_npz

    latents = torch.randn(3, 4, 4, 4)
    save_npz(latents, torch.tensor([1, 2, 3]), tmp_path / "z.npz")
    stored = np.load(tmp_path / "z.npz")
    assert np.allclose(stored["latents"], latents.numpy()) and stored["arr_1"].tolist() == [1, 2, 3]
    assert save_grid(latents, tmp_path / "z.png", nrow=3).is_file()  # a preview of 3 latent channels


def test_an_exported_pretrained_folder_samples_like_its_run(trained, tmp_path):
    folder = tmp_path / "pretrained"
    proc = run_cli("archbench.export", f"run_dir={trained}", f"out={folder}")
    assert proc.returncode == 0, proc.stderr
    assert (folder / "model.safetensors").is_file() and "step 3" in proc.stdout
    args = ["num_samples=4", "steps=3", "seed=1", "progress=false", "labels=0,1"]
    assert main([f"run_dir={trained}", f"out={tmp_path / 'from_run.png'}", *args]) == 0
    assert main([f"run_dir={folder}", f"out={tmp_path / 'from_folder.png'}", *args]) == 0
    from_run = np.load(tmp_path / "from_run.npz")["arr_0"]
    assert np.array_equal(np.load(tmp_path / "from_folder.npz")["arr_0"], from_run)


def test_guide_channels_is_a_sampling_option(trained, tmp_path, capsys):
    base = [f"run_dir={trained}", "num_samples=4", "steps=3", "cfg_scale=3", "progress=false", "labels=0,1"]
    assert main([*base, f"out={tmp_path / 'all.png'}"]) == 0
    assert main([*base, "guide_channels=1", f"out={tmp_path / 'one.png'}"]) == 0  # 1 of 1 channel: the same
    assert np.array_equal(np.load(tmp_path / "all.npz")["arr_0"], np.load(tmp_path / "one.npz")["arr_0"])
    assert main([*base, "guide_channels=0"]) == 1
    assert "guide_channels must be >= 1, got 0" in capsys.readouterr().err
