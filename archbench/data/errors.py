"""The one error every loader raises when data is absent, so callers can catch it by type."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """Data is missing: says where we looked and how to get it, because "file not found" alone is not actionable."""

    def __init__(self, dataset: str, where: str | Path | None, hint: str, detail: str = "") -> None:
        self.dataset = dataset
        self.where = None if where is None else str(where)
        self.hint = hint
        self.detail = detail
        looked = f" (looked in {self.where})" if self.where is not None else ""
        extra = f": {detail}" if detail else ""
        super().__init__(f"{dataset}: data not found{looked}{extra}. {hint}")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple:
        # OSError's default pickling would call __init__ with the message only (DataLoader workers pickle errors).
        return (type(self), (self.dataset, self.where, self.hint, self.detail))
