"""``edgepipe history import FOLDER``: run folders written before the store (or elsewhere)
taken into it. A folder is read from its ``run.json`` and ``artifacts/`` (sha256 and manifest
of each file still there); a run already stored (the same ``run.json``) is not stored twice."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ..errors import EdgepipeError
from .store import RecordedRun, Run, Store, add_results


@dataclass
class Imported(RecordedRun):
    folder: Path
    already: bool = False


def run_folders(folder: Path) -> list[Path]:
    """``folder`` when it holds a run.json, else its sub-folders that do (one level)."""
    folder = Path(folder)
    if (folder / "run.json").is_file():
        return [folder]
    if not folder.is_dir():
        raise EdgepipeError(f"{folder} is not a folder: give a run folder (`edgepipe run -o "
                            "FOLDER` wrote run.json there) or a folder of them")
    found = sorted(p.parent for p in folder.glob("*/run.json"))
    if not found:
        raise EdgepipeError(f"{folder} holds no run.json, nor do its sub-folders: give the "
                            "folder `edgepipe run -o` wrote")
    return found


def import_run(store: Store, folder: Path) -> Imported:
    """One run folder into the store (nothing when its run.json is stored already)."""
    folder = Path(folder).resolve()
    data = (folder / "run.json").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with store.session() as session:
        known = session.scalars(sa.select(Run.id).where(Run.source_sha256 == digest)).first()
    if known is not None:
        return Imported(known, [], 0, folder, already=True)
    try:
        run = json.loads(data)
        entries = run["devices"]
    except (ValueError, KeyError, TypeError):
        raise EdgepipeError(f"{folder / 'run.json'} is not a run record of `edgepipe run`: "
                            "nothing imported") from None
    names = {r["artifact"] for e in entries for r in e.get("results") or []}
    artifacts = {n: folder / "artifacts" / n for n in names}
    created = run.get("created") or (folder / "run.json").stat().st_mtime
    recorded = add_results(store, "import", entries, artifacts, run.get("config"), folder,
                           created, digest)
    return Imported(recorded.run_id, recorded.result_ids, recorded.skipped, folder)
