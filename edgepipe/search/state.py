"""A search's folder: its record (JSON, rewritten atomically after every step) and weights.

Everything a stopped search needs to go on is on disk before the record that points to it:
weights first (temporary name, then renamed), the record last. A search started again in the
same folder with the same settings continues after its last recorded step.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import EdgepipeError
from ..manifest import write_atomic

FORMAT = "edgepipe-search"


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


class SearchRecord:
    """``<out>/search.json``: kind, settings, and what the search has done so far."""

    def __init__(self, out: Path, kind: str, settings: dict[str, Any]) -> None:
        settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)
        self.out, self.path = out, out / "search.json"
        self.data: dict[str, Any] = {"format": FORMAT, "kind": kind, "settings": settings}
        if self.path.is_file():
            self._resume(kind, settings)

    def _resume(self, kind: str, settings: dict[str, Any]) -> None:
        try:
            saved = json.loads(self.path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise EdgepipeError(f"{self.path} is corrupted ({exc}): delete it to start "
                                "again, or choose another --out") from None
        if saved.get("format") != FORMAT or saved.get("kind") != kind:
            raise EdgepipeError(f"{self.out} holds another kind of search "
                                f"({saved.get('kind', 'unknown')}): choose another --out")
        differ = [k for k, v in settings.items() if saved["settings"].get(k) != v]
        if differ:
            raise EdgepipeError(
                f"{self.out} holds a search with other settings ({', '.join(differ)}): "
                "run with the same settings to resume it, or choose another --out")
        self.data = saved

    @classmethod
    def reopen(cls, out: Path) -> SearchRecord:
        """The record as saved, whatever its settings (to add to it after a search)."""
        data = json.loads((out / "search.json").read_text())
        record = cls.__new__(cls)
        record.out, record.path, record.data = out, out / "search.json", data
        return record

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data, indent=1))
