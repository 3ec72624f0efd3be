"""The data layer: every dataset offline, the Debian Fashion-MNIST files, and the latent cache end to end."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from train_support import needs_fashion_mnist

import archbench.data.fashion_mnist as fashion
import archbench.data.latents as latents
from archbench.commands.data import main as cli_main
from archbench.data import (
    DATASETS,
    DatasetNotFoundError,
    LatentShardDataset,
    build_dataset,
    dataset_info,
    default_dataset,
    encode_to_shards,
)
from archbench.data.crops import celeba_crop, center_crop_arr

needs_fashion = needs_fashion_mnist


def assert_image_item(item: tuple, channels: int, size: int) -> None:
    x, y = item
    assert x.dtype == torch.float32 and x.shape == (channels, size, size)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert isinstance(y, int)


# --- catalogue -------------------------------------------------------------------------------------------


def test_catalogue_names_and_unknown_name() -> None:
    assert set(DATASETS) == {"digits", "fashion_mnist", "fashion_pairs", "cifar10", "celeba64", "imagenet_folder",
                             "imagenet256_latents"}
    assert dataset_info("fashion_mnist").image_size == 28 and dataset_info("cifar10").channels == 3
    with pytest.raises(ValueError, match="valid names: digits, fashion_mnist"):
        build_dataset("mnist")
    with pytest.raises(ValueError, match="resize_mode"):
        build_dataset("digits", resize_mode="crop")


# --- digits ----------------------------------------------------------------------------------------------


def test_digits_splits_range_and_labels() -> None:
    from sklearn.datasets import load_digits

    train, test = build_dataset("digits"), build_dataset("digits", split="test")
    assert (len(train), len(test)) == (1438, 359)  # last 20% (1797 // 5) is the test split
    for item in (train[0], train[len(train) - 1], test[0]):
        assert_image_item(item, 1, 8)
    reference = load_digits()
    np.testing.assert_allclose(train[0][0][0].numpy(), reference.images[0] / 8 - 1, atol=1e-6)
    np.testing.assert_allclose(test[0][0][0].numpy(), reference.images[1438] / 8 - 1, atol=1e-6)
    assert [train[i][1] for i in range(10)] == reference.target[:10].tolist()
    assert sorted({test[i][1] for i in range(len(test))}) == list(range(10))
    assert train[0][0].min() == -1.0 and max(train[i][0].max() for i in range(50)) == 1.0


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resize(size: int) -> None:
    dataset = build_dataset("digits", image_size=size)
    assert_image_item(dataset[3], 1, size)
    assert dataset[3][1] == build_dataset("digits")[3][1]


def test_pad_mode_keeps_pixels_and_pads_with_black() -> None:
    native, padded = build_dataset("digits")[7][0], build_dataset("digits", image_size=12, resize_mode="pad")[7][0]
    assert padded.shape == (1, 12, 12)
    assert torch.equal(padded[:, 2:10, 2:10], native)
    assert (padded[:, :2] == -1).all() and (padded[:, :, 10:] == -1).all()
    with pytest.raises(ValueError, match="pad"):
        build_dataset("digits", image_size=4, resize_mode="pad")


# --- fashion-mnist ---------------------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_from_debian_files() -> None:
    train, test = build_dataset("fashion_mnist"), build_dataset("fashion_mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert_image_item(train[0], 1, 28)
    assert train[0][1] == 9 and fashion.CLASSES[9] == "Ankle boot"  # the standard first training image
    assert test[0][1] == 9  # so is the first test image
    assert train[0][0].min() == -1.0 and train[0][0].max() == 1.0
    assert build_dataset("fashion_mnist").pixels is train.pixels  # decoded once per process
    assert_image_item(build_dataset("fashion_mnist", image_size=32)[0], 1, 32)
    padded = build_dataset("fashion_mnist", image_size=32, resize_mode="pad")[0][0]
    assert torch.equal(padded[:, 2:30, 2:30], train[0][0]) and (padded[:, :2] == -1).all()
    assert default_dataset() == "fashion_mnist"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_custom_root_reads_idx(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([4, 1, 7]))
    dataset = build_dataset("fashion_mnist", root=str(tmp_path))
    assert len(dataset) == 3 and [dataset[i][1] for i in range(3)] == [4, 1, 7]
    np.testing.assert_allclose(dataset[2][0][0].numpy(), images[2] / 127.5 - 1, atol=1e-6)


def test_missing_fashion_mnist_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as caught:
        build_dataset("fashion_mnist", root=str(missing))
    message = str(caught.value)
    assert str(missing) in message and "apt-get install dataset-fashion-mnist" in message
    assert isinstance(caught.value, FileNotFoundError)
    assert str(pickle.loads(pickle.dumps(caught.value))) == message
    monkeypatch.setattr(fashion, "FASHION_MNIST_DIR", missing)
    assert default_dataset() == "digits"


def test_missing_cifar10_does_not_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="data.download=true") as caught:
        build_dataset("cifar10", root=str(tmp_path))
    assert str(tmp_path) in str(caught.value)


# --- image folders ---------------------------------------------------------------------------------------


def save_image(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_celeba64_folder_is_recursive_and_unlabelled(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 178, 218, 0)
    save_image(tmp_path / "nested" / "b.jpg", 178, 218, 1)
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = build_dataset("celeba64", root=str(tmp_path))
    assert len(dataset) == 2
    assert_image_item(dataset[1], 3, 64)
    assert dataset[1][1] == 0
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        build_dataset("celeba64")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no image files"):
        build_dataset("celeba64", root=str(tmp_path / "empty"))


def test_celeba_crop_matches_uvit_box() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (218, 178, 3), dtype=np.uint8))
    expected = image.crop((25, 57, 153, 185)).resize((64, 64), resample=Image.BILINEAR)
    assert np.array_equal(np.array(celeba_crop(image, 64)), np.array(expected))


def test_center_crop_arr_short_side_then_centre() -> None:
    pixels = np.zeros((300, 600, 3), dtype=np.uint8)
    pixels[:, 250:350] = 255  # a white band in the horizontal centre
    out = np.array(center_crop_arr(Image.fromarray(pixels), 64))
    assert out.shape == (64, 64, 3)
    assert out[:, 32].min() > 200 and out[:, 0].max() < 50  # band centred, sides cropped away


def test_imagenet_folder_classes_from_subfolders(tmp_path: Path) -> None:
    save_image(tmp_path / "train" / "n02" / "x.png", 40, 30, 0)
    save_image(tmp_path / "train" / "n01" / "deep" / "y.png", 50, 70, 1)
    dataset = build_dataset("imagenet_folder", root=str(tmp_path), image_size=32)  # finds root/train
    assert dataset.classes == ["n01", "n02"]
    assert [dataset[i][1] for i in range(2)] == [0, 1]
    assert_image_item(dataset[0], 3, 32)
    with pytest.raises(DatasetNotFoundError, match="'val'"):
        build_dataset("imagenet_folder", root=str(tmp_path), split="val")


# --- latent cache ----------------------------------------------------------------------------------------


def tiny_vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).eval()


def digits16(count: int) -> Dataset:
    return Subset(build_dataset("digits", split="test", image_size=16), range(count))


def shard_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_latent_cache_end_to_end(tmp_path: Path) -> None:
    vae, images = tiny_vae(), digits16(10)
    manifest_path = encode_to_shards(images, vae, tmp_path / "cache", shard_size=4, batch_size=3, source="digits")
    assert manifest_path == tmp_path / "cache" / "manifest.json"
    assert shard_files(tmp_path / "cache") == ["manifest.json", "shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    manifest = json.loads(manifest_path.read_text())
    assert manifest["count"] == 10 and [s["count"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["image_size"] == 16
    assert manifest["scaling_factor"] == 0.18215 and manifest["stores_std"] is False
    assert manifest["vae"]["config_sha256"] == latents.vae_config_hash(tiny_vae())
    assert manifest["source"] == "digits"
    for shard in manifest["shards"]:
        data = torch.load(tmp_path / "cache" / shard["file"], weights_only=True)
        assert set(data) == {"mean", "labels"} and data["labels"].dtype == torch.int64

    cached = LatentShardDataset(tmp_path / "cache")
    assert len(cached) == 10 and cached.latent_shape == (4, 8, 8)
    with torch.no_grad():
        for index in (0, 5, 9, -1):
            x, y = images[index]
            expected = vae.encode(x[None]).latent_dist.mean[0] * 0.18215
            z, label = cached[index]
            torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-6)
            assert label == y
    via_catalogue = build_dataset("imagenet256_latents", root=str(tmp_path / "cache"))
    assert torch.equal(via_catalogue[3][0], cached[3][0])
    with pytest.raises(ValueError, match="cannot be resized"):
        build_dataset("imagenet256_latents", root=str(tmp_path / "cache"), image_size=64)
    assert len(pickle.loads(pickle.dumps(cached))) == 10  # DataLoader workers can receive it


def test_latent_cache_posterior_sampling(tmp_path: Path) -> None:
    encode_to_shards(digits16(3), tiny_vae(), tmp_path, sample_posterior=True, dtype=torch.float16)
    sampled, mean_only = LatentShardDataset(tmp_path), LatentShardDataset(tmp_path, sample_posterior=False)
    assert sampled.sample_posterior and set(sampled.shard(0)) == {"mean", "std", "labels"}
    assert sampled.shard(0)["mean"].dtype == torch.float16
    assert not torch.equal(sampled[0][0], sampled[0][0])  # a fresh draw per read
    assert torch.equal(mean_only[0][0], mean_only[0][0]) and mean_only[0][0].dtype == torch.float32


class FailsAt(Dataset):
    """Stands in for a job killed mid-run."""

    def __init__(self, inner: Dataset, fail_at: int) -> None:
        self.inner, self.fail_at = inner, fail_at

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple:
        if index == self.fail_at:
            raise RuntimeError("interrupted")
        return self.inner[index]


def test_interrupted_encoding_leaves_only_complete_shards(tmp_path: Path) -> None:
    vae = tiny_vae()
    encode_to_shards(digits16(4), vae, tmp_path, shard_size=2, batch_size=2)  # an older, finished cache
    with pytest.raises(RuntimeError, match="interrupted"):
        encode_to_shards(FailsAt(digits16(8), 5), vae, tmp_path, shard_size=2, batch_size=2)
    assert shard_files(tmp_path) == ["shard-00000.pt", "shard-00001.pt"]  # no manifest, no temp files
    for name in shard_files(tmp_path):
        assert len(torch.load(tmp_path / name, weights_only=True)["labels"]) == 2
    with pytest.raises(DatasetNotFoundError, match="did not finish"):
        LatentShardDataset(tmp_path)


def test_failed_shard_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(obj: object, handle: object) -> None:
        handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(latents.torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        encode_to_shards(digits16(2), tiny_vae(), tmp_path, shard_size=2)
    assert shard_files(tmp_path) == []


# --- command line ----------------------------------------------------------------------------------------


def test_cli_help_and_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["--help"]) == 0
    assert "encode" in capsys.readouterr().out
    assert cli_main(["encode", "colour=red"]) == 1  # the project's exit code for an expected failure
    assert "unknown key 'colour'" in capsys.readouterr().err
    assert cli_main(["encode", f"vae={tmp_path}"]) == 1
    assert "missing out=..." in capsys.readouterr().err
    assert cli_main(["encode", f"out={tmp_path}", f"vae={tmp_path}", "dtype=float64"]) == 1
    assert "dtype must be one of float32, float16, bfloat16, got 'float64'" in capsys.readouterr().err
    assert cli_main(["encode", f"out={tmp_path}", f"vae={tmp_path / 'no-vae'}", "src=digits"]) == 1
    assert "huggingface-cli download" in capsys.readouterr().err


def test_cli_encodes_with_a_local_vae(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_vae().save_pretrained(tmp_path / "vae")
    args = [
        "encode",
        "src=digits",
        "split=test",
        "image_size=16",
        f"out={tmp_path / 'latents'}",
        f"vae={tmp_path / 'vae'}",
        "batch_size=4",
        "shard_size=5",
        "limit=7",
        "num_workers=0",
        "device=cpu",
    ]
    assert cli_main(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "latents" / "manifest.json")
    cached = LatentShardDataset(tmp_path / "latents")
    assert len(cached) == 7 and cached.manifest["vae"]["name"] == str(tmp_path / "vae")


def test_a_root_for_the_bundled_digits_is_reported_as_ignored():
    import logging

    from archbench.data import build_dataset

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("archbench.data")
    logger.addHandler(handler)
    try:
        build_dataset("digits", root="/data/somewhere")
    finally:
        logger.removeHandler(handler)
    assert any("data.root=/data/somewhere is ignored" in message for message in seen)
