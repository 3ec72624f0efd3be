"""Share a built backbone as a folder or a Hugging Face Hub repository, and rebuild it with one call.

A pretrained folder holds ``model.safetensors`` (the weights, no pickle) and ``config.json``: the registry
name, the resolved build configuration, and an optional ``extra`` section for whoever saved it (archbench
stores the diffusion and data settings there, so a folder can be sampled from without its training run).
``from_pretrained`` takes such a folder or a Hub repo id; Hub downloads go through ``huggingface_hub``, so
``HF_HUB_OFFLINE=1`` and its cache apply as usual.

A folder is untrusted input: before anything is built, ``config.json`` is checked for its format, a registered
name and known build keys, and against the header of ``model.safetensors`` (read as JSON, never unpickled): the
declared sizes are bounded by the tensors the file holds, then the model is built on the meta device (no memory)
under a parameter budget and its tensor names and shapes compared with the file's. Every failure is one
:class:`PretrainedError` naming the folder, the file, what is wrong and what would be valid.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.registry import build, check_structure, get_spec

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "archbench-backbone"
FORMAT_VERSION = 1
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few kB; a larger one is not ours
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
# Bytes per element of the safetensors dtypes a backbone's weights use (others are left to safetensors to check).
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# Build keys that count repeated blocks (at most one per tensor of the file) and keys that size a tensor dimension
# (at most the file's largest dimension): bounded against the weights before anything is built.
COUNT_KEYS = ("depth", "num_res_blocks")
SIZE_KEYS = ("width", "base_channels", "patch_size", "num_heads", "norm_groups", "in_channels", "num_classes")


class PretrainedError(ValueError):
    """A folder or repo that is not a pretrained backbone, or weights that do not fit its config."""


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file under the name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pretrained_config(model: nn.Module, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content of ``model`` (built by the registry, which records its name and config)."""
    config = getattr(model, "backbone_config", None)
    if not config or "name" not in config:
        raise PretrainedError(
            f"{type(model).__name__} was not built by the registry (archbench.build), so its name and build "
            "config are unknown; build it with archbench.build(name, ...) to save it"
        )
    build_config = {k: v for k, v in config.items() if k not in ("name", "family")}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": config["name"],
        "family": config.get("family", ""),
        "build": build_config,
        "extra": dict(extra or {}),
    }


def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created); returns the folder."""
    from safetensors.torch import save_model

    config = pretrained_config(model, extra)
    json.dumps(config)  # fail before writing anything when ``extra`` is not JSON-serialisable
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_model(model, tmp, metadata={"format": "pt"}))
    _atomic_write(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_pretrained`."""
    folder = Path(path)
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _resolve(source: str | os.PathLike, revision: str | None, cache_dir: str | None) -> Path:
    """A local folder as it is; a Hub repo id downloaded (or found in the cache) by huggingface_hub."""
    path = Path(source)
    if path.is_dir():
        if not is_pretrained_dir(path):
            raise PretrainedError(f"{path} is not a pretrained backbone folder: it needs {CONFIG_FILE}, {WEIGHTS_FILE}")
        return path
    text = str(source)
    if not _REPO_ID.match(text):
        raise PretrainedError(f"{text!r} is neither a folder nor a Hugging Face Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                text, revision=revision, cache_dir=cache_dir, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]
            )
        )
    except LocalEntryNotFoundError:
        raise PretrainedError(
            f"{text}: not in the local Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE is set or "
            "there is no network); download it once online or pass a local folder"
        ) from None
    except HfHubHTTPError as exc:
        raise PretrainedError(f"{text}: the Hub refused the download ({str(exc).splitlines()[0]})") from None


def _one_line(exc: BaseException | str) -> str:
    """A message on one line (a KeyError's text without the quotes ``str`` adds)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip()) or type(exc).__name__


def _json_kind(value: Any) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_pretrained_config(
    source: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """``config.json`` of a pretrained folder or Hub repo, checked for the format this module writes: a JSON object
    with the format tag, a version this code reads, a backbone name, a ``build`` object and an ``extra`` object."""
    folder = _resolve(source, revision, cache_dir)
    path = folder / CONFIG_FILE
    written_by = "save_pretrained writes a JSON object with format, format_version, name, family, build and extra"
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise PretrainedError(f"{path}: {size} bytes, too large for a backbone config (at most {MAX_CONFIG_BYTES})")
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PretrainedError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PretrainedError(f"{path}: not UTF-8 text, so not JSON; {written_by}") from None
    except json.JSONDecodeError as exc:
        raise PretrainedError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {written_by}"
        ) from None
    except (ValueError, RecursionError) as exc:  # a number with thousands of digits, nesting too deep
        raise PretrainedError(f"{path}: not usable JSON ({_one_line(exc)}); {written_by}") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{path}: holds a JSON {_json_kind(config)}, not an object; {written_by}")
    if config.get("format") != FORMAT:
        raise PretrainedError(
            f"{path} is not an archbench backbone config: format is {config.get('format')!r}, expected {FORMAT!r}"
        )
    version = config.get("format_version", 0)
    if not _is_int(version) or version < 0:
        raise PretrainedError(f"{path}: format_version must be a whole number (this archbench reads up to "
                              f"{FORMAT_VERSION}), got {version!r}")
    if version > FORMAT_VERSION:
        raise PretrainedError(
            f"{path} has format version {version}; this archbench reads up to {FORMAT_VERSION}: upgrade archbench"
        )
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise PretrainedError(f"{path}: name must be a registered backbone name (a string), got {name!r}")
    if "build" not in config:
        raise PretrainedError(f"{path}: no build section (the build options of {name}); {written_by}")
    for key in ("build", "extra"):
        if not isinstance(config.get(key, {}), dict):
            raise PretrainedError(f"{path}: {key} must be a JSON object, got a JSON {_json_kind(config[key])}")
    return {**config, "extra": config.get("extra", {}), "folder": str(folder)}


def _not_safetensors(head: bytes, size: int, length: int) -> str:
    """Why a file whose first 8 bytes (``head``) give no plausible safetensors header is not one."""
    if len(head) < 8:
        return f"{size} bytes, shorter than the 8-byte length a safetensors file starts with"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive, the format torch.save writes: a pickled checkpoint"
    if head[:1] == b"\x80":
        return "it starts like a pickle"
    if length <= MAX_HEADER_BYTES:
        return f"truncated: its header alone takes {length} bytes and the file has {size}"
    return f"its first 8 bytes announce a {length}-byte header in a {size}-byte file"


def _tensor_problem(entry: Any, data_bytes: int) -> str | None:
    """What is wrong with one tensor's entry in a safetensors header, or None."""
    if not isinstance(entry, dict):
        return "is not described by a JSON object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        return f"has dtype {dtype!r}, not a safetensors dtype name"
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        return f"has shape {shape!r}, not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes):
        return f"has data_offsets {offsets!r}, outside the {data_bytes} bytes of data the file holds"
    width = _DTYPE_BYTES.get(dtype)
    if width is not None and offsets[1] - offsets[0] != math.prod(shape) * width:
        return f"is {dtype} {shape} ({math.prod(shape) * width} bytes) but has {offsets[1] - offsets[0]} bytes of data"
    return None


def read_weights_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in a safetensors file, from its JSON header alone: no tensor data is
    read and nothing is unpickled. A file that is not safetensors (a ``torch.save`` pickle renamed, a truncated
    copy, a header whose offsets run past the end) is refused with :class:`PretrainedError`."""
    path = Path(path)
    remedy = "weights are read only from safetensors, never unpickled: re-export with archbench.export"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length > min(size - 8, MAX_HEADER_BYTES):
                raise PretrainedError(f"{path}: not a safetensors file ({_not_safetensors(head, size, length)}); "
                                      f"{remedy}")
            raw = handle.read(length)
    except OSError as exc:
        raise PretrainedError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise PretrainedError(f"{path}: not a safetensors file (its header is not a JSON object); {remedy}")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_problem(entry, size - 8 - length)
        if problem:
            raise PretrainedError(f"{path}: damaged safetensors file: tensor {name!r} {problem}; {remedy}")
        tensors[name] = (entry["dtype"], tuple(entry["shape"]))
    return tensors


def _resolved_build(config: dict[str, Any], overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The build arguments (config.json's ``build`` plus ``overrides``) and the full configuration they resolve
    to, for a registered name and only known keys, with valid structural sizes."""
    path, name = Path(config["folder"]) / CONFIG_FILE, config["name"]
    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise PretrainedError(f"{path}: {_one_line(exc)}") from None
    valid = spec.parameters()
    for keys, where in ((config["build"], f"{path}: build key"), (overrides, "from_pretrained: override")):
        unknown = sorted(set(keys) - set(valid))
        if unknown:
            raise PretrainedError(f"{where}(s) {', '.join(map(repr, unknown))} not options of {name}; valid: "
                                  f"{', '.join(sorted(valid))}")
    arguments = {**config["build"], **overrides}
    full = spec.resolve(arguments)
    try:
        check_structure(name, full)
    except ValueError as exc:
        raise PretrainedError(f"{path}: {_one_line(exc)}") from None
    return arguments, full


def _numbered_blocks(names: list[str]) -> tuple[int, str]:
    """How many blocks the tensor names show (``blocks.3.…``, ``in_blocks.0.…``, ``mid_block.…``) and a summary
    such as ``blocks.0-3`` or ``in_blocks.0-5, mid_block, out_blocks.0-5``."""
    found: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if "block" in part.lower():
                indices = found.setdefault(".".join(parts[: i + 1]), set())
                if parts[i + 1].isascii() and parts[i + 1].isdecimal() and len(parts[i + 1]) < 10:
                    indices.add(int(parts[i + 1]))
                break
    count = sum(len(indices) or 1 for indices in found.values())
    summary = [
        prefix if not indices else f"{prefix}.{min(indices)}" if len(indices) == 1
        else f"{prefix}.{min(indices)}-{max(indices)}" if len(indices) == max(indices) - min(indices) + 1
        else f"{prefix} ({len(indices)} numbered)"
        for prefix, indices in sorted(found.items())
    ]
    return count, ", ".join(summary)


def _bound_sizes(where: str, full: dict[str, Any], tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Refuse declared sizes the weights cannot hold, before anything is built: a block count above the blocks
    (or tensors) in the file, a width above its largest dimension, more patches than its position table. Building
    first would spend memory and time on them (depth 10**9 creates blocks until memory runs out)."""
    weights = WEIGHTS_FILE
    blocks, summary = _numbered_blocks(list(tensors))
    for key in COUNT_KEYS:
        value = full.get(key)
        limit = blocks or len(tensors)
        if _is_int(value) and value > limit:
            held = f"{blocks} blocks ({summary})" if blocks else f"{len(tensors)} tensors"
            raise PretrainedError(f"{where}: {key}={value} needs more blocks than the {held} {weights} holds; at most "
                                  f"{limit} fit these weights")
    shapes = [(dim, name, shape) for name, (_, shape) in tensors.items() for dim in shape]
    largest = max(shapes, default=(0, "", ()))
    for key in SIZE_KEYS:
        value = full.get(key)
        if _is_int(value) and value > largest[0]:
            raise PretrainedError(f"{where}: {key}={value} is larger than any tensor dimension in {weights} (largest: "
                                  f"{largest[0]}, in {largest[1]} {list(largest[2])})")
    size, patch, width = full.get("image_size"), full.get("patch_size"), full.get("width")
    if not (_is_int(size) and _is_int(patch) and _is_int(width) and size > 0 and patch > 0):
        return
    patches = (size // patch) ** 2
    tables = [(name, shape) for name, (_, shape) in tensors.items() if name.endswith("pos_embed") and len(shape) >= 2]
    if tables and patches > tables[0][1][-2]:
        name, shape = tables[0]
        raise PretrainedError(f"{where}: image_size={size} with patch_size={patch} makes {patches} patches but "
                              f"{name} in {weights} has room for {shape[-2]} positions (shape {list(shape)})")
    total = sum(math.prod(shape) for _, shape in tensors.values())
    if not tables and patches * width > total:
        raise PretrainedError(f"{where}: image_size={size} with patch_size={patch} makes {patches} patches of width "
                              f"{width}, a position table larger than all {total} values in {weights}")


class _OverBudget(Exception):
    """A build registered more parameters than the weights file holds."""


@contextlib.contextmanager
def _parameter_budget(limit: int) -> Iterator[None]:
    """Abort a build on this thread (raise :class:`_OverBudget`) once its distinct parameters exceed ``limit``
    values: a size the bounds did not catch stops after a few oversized modules, not after a billion."""
    thread, seen, used = threading.get_ident(), set(), [0]

    def hook(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is None or threading.get_ident() != thread or id(param) in seen:
            return
        seen.add(id(param))
        used[0] += param.numel()
        if used[0] > limit:
            raise _OverBudget(f"more than {limit} parameters (at {type(module).__name__}.{name} {list(param.shape)})")

    handle = nn.modules.module.register_module_parameter_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _check_against_weights(
    where: str, config_path: Path, name: str, arguments: dict[str, Any], tensors: dict[str, tuple[str, tuple[int, ...]]]
) -> None:
    """Build ``name`` on the meta device (no memory for tensors) under a parameter budget and compare its tensor
    names and shapes with the weights file's header; a mismatch is refused naming the tensors."""
    total = sum(math.prod(shape) for _, shape in tensors.values())
    try:
        with _parameter_budget(2 * total + 2**20), torch.device("meta"):
            model = build(name, **arguments)
    except _OverBudget as exc:
        raise PretrainedError(f"{where}: {name} built this way has {exc}, but {WEIGHTS_FILE} holds {total} values "
                              "in all") from None
    except Exception as exc:  # a constructor refusing the options, in its own words
        raise PretrainedError(f"{config_path}: {name} cannot be built from these options ({type(exc).__name__}: "
                              f"{_one_line(exc)})") from None
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    shared: dict[int, list[str]] = {}  # save_model keeps one name of a tensor shared by several modules
    for key, value in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        shared.setdefault(id(value), []).append(key)
    alias = {key: names for names in shared.values() for key in names}
    missing = [k for k in expected if k not in tensors and not any(a in tensors for a in alias.get(k, ()))]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors and tensors[k][1] != expected[k]]
    problems = []
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors of other shapes)" if len(wrong) > 1 else ""
        problems.append(f"tensor {key!r} is {list(tensors[key][1])} in {WEIGHTS_FILE}, {name} needs "
                        f"{list(expected[key])}{more}")
    for keys, what in ((missing, f"missing from {WEIGHTS_FILE}"), (unexpected, f"in {WEIGHTS_FILE} but not in {name}")):
        if keys:
            shown = ", ".join(sorted(keys)[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")
            problems.append(f"{len(keys)} tensor(s) {what}: {shown}")
    if problems:
        raise PretrainedError(f"{where}: {'; '.join(problems)}")


def check_pretrained(
    config: dict[str, Any], overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
    """Check a loaded ``config.json`` (with ``overrides``) against its folder's weights file without allocating
    the model: the build arguments to use and the file's tensors (name -> dtype, shape)."""
    folder = Path(config["folder"])
    tensors = read_weights_header(folder / WEIGHTS_FILE)
    arguments, full = _resolved_build(config, dict(overrides or {}))
    given = " with the given overrides" if overrides else ""
    where = f"{folder}: weights do not fit {config['name']} as {CONFIG_FILE} builds it{given}"
    _bound_sizes(where, full, tensors)
    _check_against_weights(where, folder / CONFIG_FILE, config["name"], arguments, tensors)
    return arguments, tensors


def from_pretrained(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    device: torch.device | str = "cpu",
    **overrides: Any,
) -> nn.Module:
    """Rebuild a backbone from a pretrained folder or Hub repo id and load its weights strictly, in eval mode
    (call ``.train()`` to fine-tune).

    ``overrides`` change build options that do not touch the weights' shapes (e.g. ``scan="reference"``);
    anything that does is refused before the model is built, naming the mismatched tensors. Any folder that
    cannot be loaded (malformed config.json, unknown backbone or build key, weights that are not safetensors or
    do not fit the config) raises :class:`PretrainedError` with a one-line message.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    config = load_pretrained_config(source, revision, cache_dir)
    arguments, _ = check_pretrained(config, overrides)
    folder, name = Path(config["folder"]), config["name"]
    try:
        model = build(name, **arguments)
        missing, unexpected = load_model(model, folder / WEIGHTS_FILE, strict=False, device=str(device))
    except (RuntimeError, MemoryError, OSError, SafetensorError) as exc:
        raise PretrainedError(f"{folder}: cannot load {WEIGHTS_FILE} into {name} ({_one_line(exc)})") from None
    if missing or unexpected:  # the header check above makes this unreachable for a well-formed file
        raise PretrainedError(
            f"{folder}: weights do not fit {name}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.pretrained_extra = config["extra"]
    return model.to(device).eval()  # ready for inference, as the Hub convention has it: no drop path, no dropout


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    extra: dict[str, Any] | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Save ``model`` into a temporary folder and upload it to ``repo_id`` (created if needed); returns the
    commit's URL. Needs a network and a token (``HF_TOKEN`` or ``huggingface-cli login``)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, extra)
        message = f"archbench {pretrained_config(model)['name']}"
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=message)
    return str(commit.commit_url)
