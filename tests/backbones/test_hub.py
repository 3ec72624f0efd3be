"""save_pretrained / from_pretrained: every family round-trips bit-exactly, locally and through the Hub cache."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_BACKBONES

import archbench
from backbones.hub import CONFIG_FILE, WEIGHTS_FILE, PretrainedError, is_pretrained_dir

OVERRIDDEN = [("dit_t2", {"depth": 3, "learn_sigma": False}), ("dis_t2", {"num_classes": 0, "scan": "reference"})]


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, model.in_channels, model.image_size, model.image_size, generator=g)
    t = torch.tensor([3, 700])
    y = torch.tensor([1, 0]) if model.num_classes else None
    return x, t, y


def _randomise(model):
    """Zero-initialised heads would make a round trip trivially exact: give every tensor random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize(("name", "overrides"), [(n, {}) for n in [*TINY_BACKBONES, "uvit_bimamba_t2"]] + OVERRIDDEN)
def test_round_trip_is_bit_exact(tmp_path, name, overrides):
    model = _randomise(archbench.build(name, **overrides)).eval()
    folder = model.save_pretrained(tmp_path / name, extra={"note": "test"})
    assert is_pretrained_dir(folder)
    config = json.loads((tmp_path / name / CONFIG_FILE).read_text())
    assert config["name"] == name and config["extra"] == {"note": "test"}
    assert all(config["build"][k] == v for k, v in overrides.items())
    loaded = archbench.from_pretrained(folder).eval()
    as_json = lambda c: json.loads(json.dumps(c))  # noqa: E731  (tuples come back as lists)
    assert type(loaded) is type(model) and as_json(loaded.backbone_config) == as_json(model.backbone_config)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    with torch.no_grad():
        assert torch.equal(model(*_inputs(model)), loaded(*_inputs(loaded)))


def test_hub_repo_id_loads_from_the_cache_offline(tmp_path, monkeypatch):
    # The layout huggingface_hub keeps for a downloaded repo: refs/main names a snapshot folder.
    model = _randomise(archbench.build("uvit_t2")).eval()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--uvit-tiny"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = archbench.from_pretrained("someone/uvit-tiny", cache_dir=str(tmp_path / "cache")).eval()
    with torch.no_grad():
        assert torch.equal(model(*_inputs(model)), loaded(*_inputs(loaded)))
    with pytest.raises(PretrainedError, match="not in the local Hugging Face cache"):
        archbench.from_pretrained("someone/not-downloaded", cache_dir=str(tmp_path / "cache"))


def test_bad_sources_are_refused_clearly(tmp_path):
    with pytest.raises(PretrainedError, match="neither a folder nor a Hugging Face Hub repo id"):
        archbench.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match=f"needs {CONFIG_FILE}, {WEIGHTS_FILE}"):
        archbench.from_pretrained(tmp_path / "empty")
    folder = archbench.build("dit_t2").save_pretrained(tmp_path / "dit")
    config = json.loads((tmp_path / "dit" / CONFIG_FILE).read_text())
    config["build"]["depth"] = 5  # weights for 4 blocks, config for 5
    (tmp_path / "dit" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=r"do not fit dit_t2.*depth=5 needs more blocks than the 4 blocks"):
        archbench.from_pretrained(folder)
    with pytest.raises(PretrainedError, match="not built by the registry"):
        archbench.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "linear")


def test_weights_file_holds_no_pickle(tmp_path):
    folder = archbench.build("dis_t2").save_pretrained(tmp_path / "dis")
    head = (tmp_path / "dis" / WEIGHTS_FILE).read_bytes()[:8]
    header_len = int.from_bytes(head, "little")  # safetensors: an 8-byte length, then a JSON header
    header = json.loads((tmp_path / "dis" / WEIGHTS_FILE).read_bytes()[8 : 8 + header_len])
    assert "in_blocks.0.mixer.A_log" in header
    assert not list((tmp_path / "dis").glob("*.tmp")) and folder


def test_from_pretrained_is_ready_for_inference(tmp_path):
    """Two identical calls on one loaded model agree: eval mode, so DiS's drop path and dropout are off."""
    archbench.build("dis_t2", image_size=8, in_channels=1, num_classes=10).save_pretrained(tmp_path / "dis")
    model = archbench.from_pretrained(tmp_path / "dis")
    assert not model.training
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 500.0]), torch.tensor([1, 2])
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised layers would hide any randomness
            p.add_(0.01 * torch.randn_like(p))
        assert torch.equal(model(x, t, y), model(x, t, y))
