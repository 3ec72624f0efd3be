"""A pretrained folder damaged the ways a hostile user would (issue 23 items 7 and 8): malformed or non-object
config.json, an unknown backbone, an extra build key, missing/extra/reshaped tensors, a pickle renamed
model.safetensors, absurd sizes. The API raises PretrainedError (the run loader its CheckpointError subclass) in
one line; every command exits 1 with one ``error:`` line and no traceback; huge sizes are refused in moments,
before anything is allocated; a pickle is never unpickled."""

from __future__ import annotations

import contextlib
import json
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_support import REPO, cli_env, one_thread, run_train  # noqa: F401

import archbench
from archbench.training.checkpoint import CheckpointError
from archbench.training.runs import PretrainedFolderError, load_ema_model
from backbones.hub import CONFIG_FILE, WEIGHTS_FILE, PretrainedError

GIB = 2**30


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real folder written by ``python -m archbench.export`` from a one-step dit_t2 run on digits."""
    from archbench.export import main as export_main

    root = tmp_path_factory.mktemp("pretrained")
    assert run_train(root / "run", "train.steps=1") == 0
    assert export_main([f"run_dir={root / 'run'}", f"out={root / 'folder'}"]) == 0
    return root / "folder"


class _Touch:
    """Unpickling this creates ``marker``: proof that a loader unpickled the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _edit_config(edit):
    def corrupt(folder: Path) -> None:
        config = json.loads((folder / CONFIG_FILE).read_text())
        edit(config)
        (folder / CONFIG_FILE).write_text(json.dumps(config))

    return corrupt


def _edit_weights(edit):
    def corrupt(folder: Path) -> None:
        tensors = {key: value.clone() for key, value in load_file(folder / WEIGHTS_FILE).items()}
        edit(tensors)
        (folder / WEIGHTS_FILE).unlink()
        save_file(tensors, folder / WEIGHTS_FILE)

    return corrupt


def _torch_save_pickle(folder: Path) -> None:
    state = {key: value.clone() for key, value in load_file(folder / WEIGHTS_FILE).items()}
    torch.save({**state, "payload": _Touch(folder.parent / f"{folder.name}.unpickled")}, folder / WEIGHTS_FILE)


def _raw_pickle(folder: Path) -> None:
    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps(_Touch(folder.parent / f"{folder.name}.unpickled"), protocol=4))


def _shorten_data(folder: Path) -> None:
    raw = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(raw[:-64])  # the header intact, the last tensor's bytes cut off


# name -> (how to damage the folder, a fragment the one-line message must hold, which file it must name)
FAULTS = {
    "malformed_json": (lambda f: (f / CONFIG_FILE).write_text('{"format": "archbench-backbone", "name": '),
                       "not valid JSON (Expecting value at line 1 column 42)", CONFIG_FILE),
    "json_list": (lambda f: (f / CONFIG_FILE).write_text("[1, 2, 3]"), "holds a JSON list, not an object",
                  CONFIG_FILE),
    "unknown_backbone": (_edit_config(lambda c: c.update(name="dit_t3")),
                         "unknown backbone 'dit_t3'. Did you mean: dit_t4, dit_t2", CONFIG_FILE),
    "extra_build_key": (_edit_config(lambda c: c["build"].update(bogus=1)),
                        "build key(s) 'bogus' not options of dit_t2; valid: attention_every,", CONFIG_FILE),
    "missing_tensor": (_edit_weights(lambda t: t.pop("blocks.0.attn.qkv.bias")),
                       "1 tensor(s) missing from model.safetensors: blocks.0.attn.qkv.bias", WEIGHTS_FILE),
    "extra_tensor": (_edit_weights(lambda t: t.update({"bogus.weight": torch.zeros(2)})),
                     "1 tensor(s) in model.safetensors but not in dit_t2: bogus.weight", WEIGHTS_FILE),
    "wrong_shape": (_edit_weights(lambda t: t.update({"final_layer.linear.weight": torch.zeros(3, 3)})),
                    "tensor 'final_layer.linear.weight' is [3, 3] in model.safetensors, dit_t2 needs [8, 96]",
                    WEIGHTS_FILE),
    "pickle_renamed": (_torch_save_pickle, "not a safetensors file (it is a zip archive, the format torch.save "
                       "writes: a pickled checkpoint); weights are read only from safetensors, never unpickled",
                       WEIGHTS_FILE),
    "depth_1e9": (_edit_config(lambda c: c["build"].update(depth=10**9)),
                  "depth=1000000000 needs more blocks than the 4 blocks (blocks.0-3) model.safetensors holds; "
                  "at most 4 fit", WEIGHTS_FILE),
    "width_1e7": (_edit_config(lambda c: c["build"].update(width=10**7)),
                  "width=10000000 is larger than any tensor dimension in model.safetensors (largest: 576",
                  WEIGHTS_FILE),
}
# Further damage, checked through the API only.
API_ONLY = {
    "raw_pickle": (_raw_pickle, "not a safetensors file (it starts like a pickle)", WEIGHTS_FILE),
    "truncated_header": (lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:100]),
                         "not a safetensors file (truncated: its header alone takes", WEIGHTS_FILE),
    "truncated_data": (_shorten_data, "damaged safetensors file: tensor", WEIGHTS_FILE),
    "empty_weights": (lambda f: (f / WEIGHTS_FILE).write_bytes(b""), "0 bytes, shorter than the 8-byte length",
                      WEIGHTS_FILE),
    "not_utf8": (lambda f: (f / CONFIG_FILE).write_bytes(b"\xff\xfe{}"), "not UTF-8 text", CONFIG_FILE),
    "format_version_text": (_edit_config(lambda c: c.update(format_version="one")),
                            "format_version must be a whole number", CONFIG_FILE),
    "build_not_object": (_edit_config(lambda c: c.update(build=[4])), "build must be a JSON object", CONFIG_FILE),
    "depth_as_text": (_edit_config(lambda c: c["build"].update(depth="4")),
                      "dit_t2: depth must be a positive integer, got '4'", CONFIG_FILE),
    "unknown_mixer": (_edit_config(lambda c: c["build"].update(mixer="bogus")),
                      "dit_t2 cannot be built from these options (ValueError: unknown mixer 'bogus'", CONFIG_FILE),
    "image_size_1e4": (_edit_config(lambda c: c["build"].update(image_size=10**4)),
                       "image_size=10000 with patch_size=2 makes 25000000 patches but pos_embed in "
                       "model.safetensors has room for 16 positions", WEIGHTS_FILE),
    "mlp_ratio_1e9": (_edit_config(lambda c: c["build"].update(mlp_ratio=1e9)),
                      "dit_t2 built this way has more than", WEIGHTS_FILE),
}


def _damaged(exported: Path, tmp_path: Path, fault: str) -> Path:
    corrupt = {**FAULTS, **API_ONLY}[fault][0]
    folder = tmp_path / fault
    shutil.copytree(exported, folder)
    corrupt(folder)
    return folder


@contextlib.contextmanager
def _address_space_headroom(limit: int):
    """Allow this process at most ``limit`` more bytes of address space while the block runs: an allocation the
    size checks should have prevented fails at once (MemoryError) instead of eating the machine's memory."""
    vm_size = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_size + limit if hard == resource.RLIM_INFINITY else min(hard, vm_size + limit)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _cap_memory() -> None:
    """preexec_fn of the command processes: 16 GiB of address space (they need under 4), so that a regression that
    builds depth 10**9 fails inside its process instead of exhausting the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (16 * GIB, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _command(*args: str) -> subprocess.CompletedProcess:
    env = {**cli_env(), "CUDA_VISIBLE_DEVICES": ""}  # CPU: a CUDA context would reserve more than the cap
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO, preexec_fn=_cap_memory)


def _one_error_line(proc: subprocess.CompletedProcess, program: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{program}: error: "), proc.stderr
    return errors[0]


def test_the_intact_folder_loads_and_samples(exported, tmp_path):
    """The checks refuse nothing a real export wrote."""
    net = archbench.from_pretrained(exported)
    assert net.backbone_config["depth"] == 4 and net.pretrained_extra["data"]["name"] == "digits"
    run = load_ema_model(exported, None, torch.device("cpu"))
    assert run.backbone == "dit_t2" and run.step == 1
    proc = _command("archbench.sample", f"run_dir={exported}", "num_samples=2", "steps=2", "progress=false",
                    f"out={tmp_path / 'ok.png'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ok.npz").is_file()


@pytest.mark.parametrize("fault", [*FAULTS, *API_ONLY])
def test_the_api_raises_one_line(exported, tmp_path, fault):
    _, fragment, file = {**FAULTS, **API_ONLY}[fault]
    folder = _damaged(exported, tmp_path, fault)
    with pytest.raises(PretrainedError) as raised:
        archbench.from_pretrained(folder)
    message = str(raised.value)
    assert fragment in message and "\n" not in message
    assert str(folder) in message and file in message
    # The run loader (sample, eval, export, the study) raises the CheckpointError every command prints.
    with pytest.raises(PretrainedFolderError) as from_runs:
        load_ema_model(folder, None, torch.device("cpu"))
    assert isinstance(from_runs.value, CheckpointError) and isinstance(from_runs.value, PretrainedError)
    assert str(from_runs.value) == message
    assert not (tmp_path / f"{fault}.unpickled").exists()  # the pickles' payload never ran


@pytest.mark.parametrize(("fault", "fragment"), [
    ("depth_1e9", "depth=1000000000 needs more blocks"),
    ("width_1e7", "width=10000000 is larger than any tensor dimension"),
])
def test_huge_sizes_are_refused_at_once_without_allocating(exported, tmp_path, fault, fragment):
    folder = _damaged(exported, tmp_path, fault)
    started = time.monotonic()
    with _address_space_headroom(1 * GIB), pytest.raises(PretrainedError, match=fragment):
        archbench.from_pretrained(folder)
    assert time.monotonic() - started < 10


def test_a_half_folder_is_named(exported, tmp_path):
    folder = tmp_path / "half"
    shutil.copytree(exported, folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(PretrainedFolderError, match=f"holds {CONFIG_FILE} but no {WEIGHTS_FILE}"):
        load_ema_model(folder, None, torch.device("cpu"))


def test_exported_sections_are_checked(exported, tmp_path):
    folder = tmp_path / "sections"
    shutil.copytree(exported, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["extra"]["data"]["channels"] = 3
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PretrainedFolderError, match="extra.data.channels is 3 but the network takes 1 input"):
        load_ema_model(folder, None, torch.device("cpu"))
    config["extra"]["data"]["channels"] = 1
    config["extra"]["sample"] = [1]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PretrainedFolderError, match="extra.sample must be a JSON object"):
        load_ema_model(folder, None, torch.device("cpu"))
    config["extra"]["sample"] = {}
    config["extra"]["diffusion"]["T"] = 10**12  # the schedules would take 8 TB per array
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PretrainedFolderError, match=r"extra.diffusion.T must be a whole number in \[1, 1000000\]"):
        load_ema_model(folder, None, torch.device("cpu"))


# The commands print whatever one-line error the loader raises (every fault goes through the API test above);
# one fault per kind of check keeps the subprocess count (a few seconds each) down.
@pytest.mark.parametrize("fault", ["malformed_json", "unknown_backbone", "wrong_shape", "pickle_renamed", "depth_1e9"])
def test_sample_exits_1_with_one_line(exported, tmp_path, fault):
    _, fragment, file = FAULTS[fault]
    folder = _damaged(exported, tmp_path, fault)
    proc = _command("archbench.sample", f"run_dir={folder}", "num_samples=2", f"out={tmp_path / 'grid.png'}")
    line = _one_error_line(proc, "archbench.sample")
    assert fragment in line and str(folder) in line and file in line
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / f"{fault}.unpickled").exists()


@pytest.mark.parametrize("fault", ["unknown_backbone", "malformed_json", "pickle_renamed", "depth_1e9"])
def test_eval_exits_1_with_one_line(exported, tmp_path, fault):
    folder = _damaged(exported, tmp_path, fault)
    proc = _command("archbench.eval", f"run_dir={folder}", "num_samples=4")
    assert FAULTS[fault][1] in _one_error_line(proc, "archbench.eval")
    assert not (folder / "eval.json").exists()


@pytest.mark.parametrize("fault", ["malformed_json", "pickle_renamed"])
def test_export_exits_1_with_one_line(exported, tmp_path, fault):
    folder = _damaged(exported, tmp_path, fault)
    proc = _command("archbench.export", f"run_dir={folder}", f"out={tmp_path / 'again'}")
    assert FAULTS[fault][1] in _one_error_line(proc, "archbench.export")
    assert not (tmp_path / "again").exists()
