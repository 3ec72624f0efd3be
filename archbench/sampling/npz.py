"""The one writer (and a streaming reader) of ``.npz`` sample files: guided-diffusion's / DiT's layout.

``np.savez`` would need the whole array in memory and stamps the current time into every zip entry; a 50k
set of 256x256 images is about 10 GB, and a set drawn twice must be the same file byte for byte. So the
members are written here one block of rows at a time, uncompressed (``np.load`` and ADM's evaluator read
the result unchanged), with a fixed timestamp, to a temporary file that replaces the target atomically.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can carry: no wall-clock time in the bytes


@dataclass(frozen=True)
class Streamed:
    """An array written block by block: its full ``shape`` and ``dtype``, and the row blocks in order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Iterable[np.ndarray]


def _write_streamed(f, value: Streamed) -> None:
    dtype = np.dtype(value.dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(value.shape)}
    np.lib.format.write_array_header_1_0(f, header)
    rows = 0
    for block in value.blocks:
        if block.dtype != dtype or tuple(block.shape[1:]) != tuple(value.shape[1:]):
            raise ValueError(
                f"block of shape {block.shape} and dtype {block.dtype} does not fit an array "
                f"{tuple(value.shape)} of {dtype}"
            )
        f.write(np.ascontiguousarray(block))
        rows += block.shape[0]
    if rows != value.shape[0]:
        raise ValueError(f"wrote {rows} rows of an array declared with {value.shape[0]}")


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray | Streamed]) -> Path:
    """Write ``arrays`` (plain or :class:`Streamed`) as an uncompressed ``.npz`` at ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)
                info.external_attr = 0o600 << 16
                with zf.open(info, "w", force_zip64=True) as f:
                    if isinstance(value, Streamed):
                        _write_streamed(f, value)
                    else:
                        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def npz_keys(path: str | os.PathLike[str]) -> list[str]:
    """The array names in an ``.npz`` (without reading any of them)."""
    with zipfile.ZipFile(path) as zf:
        return [name.removesuffix(".npy") for name in zf.namelist()]


def _open_member(zf: zipfile.ZipFile, key: str):
    f = zf.open(f"{key}.npy")
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    return f, tuple(shape), bool(fortran_order), np.dtype(dtype)


def npz_array_info(path: str | os.PathLike[str], key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``key`` of an ``.npz``, from its header alone (a 10 GB set stays on disk)."""
    with zipfile.ZipFile(path) as zf:
        f, shape, _, dtype = _open_member(zf, key)
        f.close()
    return shape, dtype


def iter_npz_rows(
    path: str | os.PathLike[str], key: str, batch_size: int, limit: int | None = None
) -> Iterator[np.ndarray]:
    """The first ``limit`` (default all) rows of array ``key``, ``batch_size`` rows at a time, read sequentially.

    Works for compressed members too (ADM's evaluator reads its batches the same way); object arrays and
    Fortran-ordered arrays are refused, since neither can be a sample file.
    """
    with zipfile.ZipFile(path) as zf:
        f, shape, fortran_order, dtype = _open_member(zf, key)
        with f:
            if dtype.hasobject or fortran_order or not shape:
                raise ValueError(f"{path}: {key} is not a C-ordered numeric array (dtype {dtype}, shape {shape})")
            total = shape[0] if limit is None else min(limit, shape[0])
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, total, batch_size):
                n = min(batch_size, total - start)
                data = f.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    raise ValueError(f"{path}: {key} ends after {start} of its {shape[0]} rows (truncated file?)")
                yield np.frombuffer(data, dtype=dtype).reshape(n, *shape[1:])
