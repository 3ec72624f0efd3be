"""Feature networks: checksum verification, clear errors instead of downloads, Inception-v3 architecture."""

import hashlib
import json

import pytest
import torch

from archbench.evaluation import (
    ChecksumMismatchError,
    DatasetCNN,
    DatasetCNNFeatures,
    FeatureExtractor,
    FeatureWeightsMissing,
    InceptionWeightsMissing,
    get_feature_extractor,
    load_cnn,
)
from archbench.evaluation import inception as inc
from archbench.evaluation.dataset_cnn import CNNConfig, default_cnn_path, save_cnn, sidecar_path

TINY = CNNConfig(in_channels=1, input_size=8, num_classes=10, widths=(4, 4, 8), embed_dim=16)


def _save_tiny(path):
    torch.manual_seed(0)
    return save_cnn(DatasetCNN(TINY), path, {"dataset": "digits", "network": "digits_cnn", "test_accuracy": 0.1})


def test_save_load_round_trip_verifies_checksum(tmp_path):
    meta = _save_tiny(tmp_path / "net.safetensors")
    side = json.loads(sidecar_path(tmp_path / "net.safetensors").read_text())
    assert side["sha256"] == hashlib.sha256((tmp_path / "net.safetensors").read_bytes()).hexdigest() == meta["sha256"]
    assert side["feature_dim"] == 16 and side["dataset"] == "digits"
    model, loaded = load_cnn(tmp_path / "net.safetensors")
    assert loaded["sha256"] == meta["sha256"] and model.config == TINY


def test_same_weights_give_same_checksum(tmp_path):
    assert _save_tiny(tmp_path / "a.safetensors")["sha256"] == _save_tiny(tmp_path / "b.safetensors")["sha256"]


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "net.safetensors"
    _save_tiny(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=r"checksum mismatch .*train-features dataset=digits"):
        load_cnn(path)
    with pytest.raises(ChecksumMismatchError):
        get_feature_extractor("digits_cnn", weights=path)


def test_dataset_cnn_extractor_converts_channels_and_size(tmp_path):
    _save_tiny(tmp_path / "net.safetensors")
    ext = DatasetCNNFeatures.from_file(tmp_path / "net.safetensors")
    assert isinstance(ext, FeatureExtractor)
    assert (ext.name, ext.dim, ext.score_name) == ("digits_cnn", 16, "FD-digits_cnn")
    rgb = torch.rand(3, 3, 32, 32) * 2 - 1
    gray = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert ext(rgb).shape == (3, 16)
    torch.testing.assert_close(ext(rgb), ext(gray))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ext(rgb * 127.5 + 127.5)


def test_missing_dataset_cnn_names_the_command(tmp_path):
    with pytest.raises(FeatureWeightsMissing, match=r"python -m archbench\.eval train-features dataset=fashion_mnist"):
        get_feature_extractor("fashion_mnist_cnn", cache=tmp_path)


def test_train_if_missing_trains_once(tmp_path, monkeypatch):
    import archbench.evaluation.train_cnn as train_cnn

    calls = []

    def fake_train(dataset, *, out, **_):
        calls.append(dataset)
        _save_tiny(out)

    monkeypatch.setattr(train_cnn, "train_dataset_cnn", fake_train)
    ext = get_feature_extractor("digits_cnn", cache=tmp_path, train_if_missing=True)
    assert calls == ["digits"] and ext.dim == 16
    assert default_cnn_path("digits", tmp_path).is_file()
    get_feature_extractor("digits_cnn", cache=tmp_path, train_if_missing=True)
    assert calls == ["digits"]


def test_unknown_network():
    with pytest.raises(ValueError, match="unknown feature network 'vgg'"):
        get_feature_extractor("vgg")


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("archbench must never download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_missing_inception_weights_message(empty_torch_home):
    with pytest.raises(InceptionWeightsMissing) as err:
        get_feature_extractor("inception")
    message = str(err.value)
    assert inc.WEIGHTS_FILENAME in message
    assert f"{empty_torch_home}/" in message
    assert inc.WEIGHTS_URL in message
    assert inc.WEIGHTS_ENV in message and "never downloads" in message


def test_explicit_missing_inception_path_is_named(empty_torch_home, tmp_path, monkeypatch):
    with pytest.raises(InceptionWeightsMissing, match="nowhere.pth"):
        inc.find_inception_weights(tmp_path / "nowhere.pth")
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(InceptionWeightsMissing, match="env.pth"):
        inc.find_inception_weights()


def test_inception_architecture_with_random_weights():
    pytest.importorskip("torch_fidelity")
    torch.manual_seed(0)
    ext = inc.InceptionFeatures.random_init()
    assert isinstance(ext, FeatureExtractor) and ext.score_name == "FID" and ext.dim == 2048
    out = ext(torch.rand(2, 1, 299, 299) * 2 - 1)  # grayscale is repeated to RGB; other sizes resized to 299
    assert out.shape == (2, 2048) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_inception_loads_local_weights_from_hub_cache(empty_torch_home):
    pytest.importorskip("torch_fidelity")
    torch.manual_seed(0)
    random_net = inc.InceptionFeatures.random_init()
    empty_torch_home.mkdir(parents=True)
    path = empty_torch_home / inc.ALT_WEIGHTS_FILENAMES[0]  # pytorch-fid's name is accepted too
    torch.save(random_net.network.state_dict(), path)
    ext = get_feature_extractor("inception")
    assert ext.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded, expected = ext.network.state_dict(), random_net.network.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_channel_and_size_conversion():
    from archbench.evaluation.extractor import resize, to_channels

    gray = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(to_channels(gray, 3), gray.expand(-1, 3, -1, -1))
    assert torch.allclose(to_channels(to_channels(gray, 3), 1), gray, atol=1e-6)  # luma weights sum to 1
    assert resize(gray, 8) is gray and resize(gray, 28).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="4-channel"):
        to_channels(torch.zeros(1, 4, 2, 2), 3)
