"""The results store: every measurement edgepipe makes, in one database.

SQLite under ``EDGEPIPE_HOME`` (``results.db``) by default; a lab shared by several hosts sets
``EDGEPIPE_DB`` to a PostgreSQL URL (``postgresql+psycopg://user:password@host/db``; a bare
``postgresql://`` is read as psycopg). The schema is SQLAlchemy's, versioned by Alembic
(``migrations/``): a store is brought up to this edgepipe's schema when opened, and a store
whose schema is newer than this edgepipe knows is refused in one line, as is one that cannot
be reached (nothing is then written anywhere else).

What a result keeps: the statistics of the whole measurement, every sitting's raw run times
(ms) and device-state flags, the reference measured beside each sitting (:mod:`.reference`),
the per-op table, the device's identity and state, the runtime and the versions of every
runtime on the device, the artifact (sha256, manifest), the run's config, and when. A run is
written in one transaction: a run killed while it is written leaves nothing of itself.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, deferred, mapped_column

from ..errors import EdgepipeError

MIGRATIONS = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (sa.UniqueConstraint("name", "hostname", "fingerprint", name="uq_device"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    hostname: Mapped[str] = mapped_column(sa.String(255))
    fingerprint: Mapped[str] = mapped_column(sa.String(64), index=True)
    identity_words: Mapped[str | None] = mapped_column(sa.Text)
    cpu_model: Mapped[str | None] = mapped_column(sa.Text)
    machine: Mapped[str | None] = mapped_column(sa.String(64))
    cores: Mapped[int | None] = mapped_column(sa.Integer)
    identity: Mapped[Any] = mapped_column(sa.JSON, nullable=True)


class Artifact(Base):
    __tablename__ = "artifacts"
    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    file: Mapped[str] = mapped_column(sa.String(255))
    model: Mapped[str | None] = mapped_column(sa.String(255))
    format: Mapped[str | None] = mapped_column(sa.String(32))
    precision: Mapped[str | None] = mapped_column(sa.String(16))
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    manifest: Mapped[Any] = deferred(mapped_column(sa.JSON, nullable=True))


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # run | profile | import
    created: Mapped[float] = mapped_column(sa.Float, index=True)
    host: Mapped[str | None] = mapped_column(sa.String(255))
    folder: Mapped[str | None] = mapped_column(sa.Text)
    source_sha256: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    edgepipe_version: Mapped[str | None] = mapped_column(sa.String(32))
    config: Mapped[Any] = deferred(mapped_column(sa.JSON, nullable=True))


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (sa.UniqueConstraint("device_id", "job_id", name="uq_result_job"),
                      sa.Index("ix_results_model_created", "model", "created"),
                      sa.Index("ix_results_device_created", "device_id", "created"))
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"),
                                        index=True)
    device_id: Mapped[int] = mapped_column(sa.ForeignKey("devices.id"))
    artifact_sha256: Mapped[str] = mapped_column(sa.ForeignKey("artifacts.sha256"), index=True)
    created: Mapped[float] = mapped_column(sa.Float)
    job_id: Mapped[str | None] = mapped_column(sa.String(64))
    model: Mapped[str] = mapped_column(sa.String(255))
    format: Mapped[str] = mapped_column(sa.String(32))
    precision: Mapped[str] = mapped_column(sa.String(16))
    runtime: Mapped[str] = mapped_column(sa.String(32))
    runtime_version: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    runtimes: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    threads: Mapped[int] = mapped_column(sa.Integer)
    median_ms: Mapped[float | None] = mapped_column(sa.Float)
    p90_ms: Mapped[float | None] = mapped_column(sa.Float)
    min_ms: Mapped[float | None] = mapped_column(sa.Float)
    count: Mapped[int | None] = mapped_column(sa.Integer)
    sittings: Mapped[int] = mapped_column(sa.Integer)
    flagged: Mapped[bool] = mapped_column(sa.Boolean)
    flags: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    latency: Mapped[Any] = deferred(mapped_column(sa.JSON, nullable=True))
    memory: Mapped[Any] = deferred(mapped_column(sa.JSON, nullable=True))
    load_ms: Mapped[float | None] = mapped_column(sa.Float)
    measured_by: Mapped[str | None] = mapped_column(sa.Text)
    device_state: Mapped[Any] = deferred(mapped_column(sa.JSON, nullable=True))
    replicability: Mapped[Any] = deferred(mapped_column(sa.JSON, nullable=True))
    per_op: Mapped[Any] = deferred(mapped_column(sa.JSON, nullable=True))
    per_op_source: Mapped[str | None] = mapped_column(sa.Text)


class Sitting(Base):
    __tablename__ = "sittings"
    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id", ondelete="CASCADE"),
                                           index=True)
    number: Mapped[int] = mapped_column(sa.Integer)
    job_id: Mapped[str | None] = mapped_column(sa.String(64))
    time: Mapped[float | None] = mapped_column(sa.Float)
    median_ms: Mapped[float | None] = mapped_column(sa.Float)
    raw_ms: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    flags: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    reference: Mapped[Any] = mapped_column(sa.JSON, nullable=True)


# --- opening -----------------------------------------------------------------------------------
def default_url() -> str:
    """``EDGEPIPE_DB``, else SQLite at ``EDGEPIPE_HOME/results.db``."""
    from ..host.registry import config_home

    return os.environ.get("EDGEPIPE_DB") or f"sqlite:///{config_home() / 'results.db'}"


def _engine_url(url: str) -> sa.URL:
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError:
        raise EdgepipeError(f"results database URL {url!r} is not a database URL: give "
                            "sqlite:///PATH or postgresql://USER@HOST/DB in EDGEPIPE_DB") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    return parsed


def _said(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """The driver's own words, first line only (psycopg repeats the whole URL)."""
    words = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return words[0] if words else type(exc).__name__


class Store:
    """An open results store (see the module doc). Use :func:`open_store`."""

    def __init__(self, engine: sa.Engine, url: str) -> None:
        self.engine, self.url = engine, url

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A session; ``write``: one transaction, committed at the end or rolled back."""
        with Session(self.engine, expire_on_commit=False) as session:
            if not write:
                yield session
                return
            try:
                with session.begin():
                    yield session
            except sa_exc.OperationalError as exc:
                raise EdgepipeError(f"the results database {self.url} failed while writing "
                                    f"({_reason(exc)}): nothing of this was written") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _migrations_config(connection: sa.Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def schema_heads() -> set[str]:
    """The schema revisions this edgepipe writes (Alembic's heads)."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory(str(MIGRATIONS)).get_heads())


def open_store(url: str | None = None) -> Store:
    """The store at ``url`` (default :func:`default_url`), its schema brought up to date.

    Raises one line when the URL is not a database URL, the database cannot be reached, or
    its schema is newer than this edgepipe's (written by a later version)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    given = url or default_url()
    parsed = _engine_url(given)
    said = _said(parsed)
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(parsed, **({"connect_args": {"connect_timeout": 5},
                                              "pool_pre_ping": True}  # a run idles minutes
                                             if parsed.drivername.startswith("postgresql")
                                             else {}))
    except (sa_exc.NoSuchModuleError, ImportError) as exc:
        raise EdgepipeError(f"results database {said}: no driver for {parsed.drivername} "
                            f"({_reason(exc)}): use sqlite:/// or postgresql://") from None
    if parsed.drivername.startswith("sqlite"):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    scripts = ScriptDirectory(str(MIGRATIONS))
    heads = set(scripts.get_heads())
    try:
        with engine.begin() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    except sa_exc.SQLAlchemyError as exc:
        engine.dispose()
        raise EdgepipeError(f"cannot reach the results database {said} ({_reason(exc)}): "
                            "check EDGEPIPE_DB, or unset it to keep results in SQLite "
                            "under EDGEPIPE_HOME") from None
    unknown = [r for r in current if not _known_revision(scripts, r)]
    if unknown:
        engine.dispose()
        raise EdgepipeError(f"the results database {said} has schema {', '.join(unknown)}, "
                            f"newer than this edgepipe's ({', '.join(sorted(heads))}): "
                            "upgrade edgepipe on this host (nothing was written)")
    if set(current) != heads:
        try:
            with engine.begin() as connection:
                command.upgrade(_migrations_config(connection), "head")
        except sa_exc.SQLAlchemyError as exc:
            engine.dispose()
            raise EdgepipeError(f"cannot bring the results database {said} to this "
                                f"edgepipe's schema ({_reason(exc)})") from None
    return Store(engine, said)


def _known_revision(scripts: Any, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return scripts.get_revision(revision) is not None
    except CommandError:  # alembic's ResolutionError: a revision of a later edgepipe
        return False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (history) while a run writes
    cursor.execute("PRAGMA busy_timeout=30000")  # several edgepipe processes, one file
    cursor.close()


# --- writing -----------------------------------------------------------------------------------
@dataclass
class RecordedRun:
    run_id: int
    result_ids: list[int]
    skipped: int  # results already in the store (the same device and job)


def _device_row(session: Session, name: str, info: dict[str, Any]) -> Device:
    key = dict(name=name, hostname=str(info.get("hostname") or "?"),
               fingerprint=str(info.get("fingerprint") or "?"))
    found = session.scalars(sa.select(Device).filter_by(**key)).first()
    if found is None:
        found = Device(**key, identity_words=info.get("identity_words"),
                       cpu_model=info.get("cpu_model"), machine=info.get("machine"),
                       cores=info.get("cores"), identity=info.get("identity"))
        session.add(found)
        session.flush()
    return found


def _artifact_row(session: Session, record: dict[str, Any]) -> Artifact:
    found = session.get(Artifact, record["sha256"])
    if found is None:
        found = Artifact(**record)
        session.add(found)
        session.flush()
    return found


def artifact_record(path: Path | None, name: str, result: dict[str, Any]) -> dict[str, Any]:
    """An artifact's row: its sha256 and manifest from the file where it is still there, else
    what the result says (an imported run whose artifacts were deleted: sha256 of the name,
    marked so)."""
    from ..manifest import file_sha256, manifest_path

    if path is not None and path.is_file():
        manifest = None
        if manifest_path(path).is_file():
            import json

            manifest = json.loads(manifest_path(path).read_text())
        return {"sha256": file_sha256(path), "file": name, "model": result.get("model"),
                "format": result.get("format"), "precision": result.get("precision"),
                "size_bytes": path.stat().st_size, "manifest": manifest}
    digest = hashlib.sha256(f"missing:{name}:{result.get('model')}".encode()).hexdigest()
    return {"sha256": digest, "file": name, "model": result.get("model"),
            "format": result.get("format"), "precision": result.get("precision"),
            "size_bytes": None, "manifest": {"missing": "the file was gone when imported"}}


def sitting_records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A profile result's sittings (its repeats): raw times, flags and reference of each."""
    repeats = result.get("repeats") or [{"job_id": result.get("job_id"),
                                         "latency": result.get("latency") or {},
                                         "flags": result.get("flags") or []}]
    rows = []
    for i, r in enumerate(repeats):
        latency = r.get("latency") or {}
        rows.append({"number": i + 1, "job_id": r.get("job_id"), "time": r.get("time"),
                     "median_ms": latency.get("median_ms"), "raw_ms": latency.get("raw_ms"),
                     "flags": r.get("flags") or [], "reference": r.get("reference")})
    return rows


def add_results(store: Store, kind: str, entries: list[dict[str, Any]],
                artifacts: dict[str, Path | None], config: dict[str, Any] | None = None,
                folder: Path | None = None, created: float | None = None,
                source_sha256: str | None = None) -> RecordedRun:
    """Write one run in one transaction: ``entries`` as ``edgepipe run`` keeps them per
    device (``name``, ``info``, ``results``: profile results as dicts), ``artifacts`` the file
    of each artifact name (None where gone). A result already in the store (same device and
    job) is skipped."""
    from .. import __version__

    when = created or time.time()
    with store.session(write=True) as session:
        run = Run(kind=kind, created=when, host=socket.gethostname(),
                  folder=str(folder) if folder else None, source_sha256=source_sha256,
                  edgepipe_version=__version__, config=config)
        session.add(run)
        session.flush()
        ids, skipped = [], 0
        for entry in entries:
            info = entry.get("info") or {}
            if not entry.get("results"):
                continue
            device = _device_row(session, entry.get("name") or "?", info)
            for r in entry["results"]:
                if r.get("job_id") and session.scalars(sa.select(Result.id).filter_by(
                        device_id=device.id, job_id=r["job_id"])).first() is not None:
                    skipped += 1
                    continue
                art = _artifact_row(session, artifact_record(artifacts.get(r["artifact"]),
                                                             r["artifact"], r))
                sittings = sitting_records(r)
                lat = {k: v for k, v in (r.get("latency") or {}).items() if k != "raw_ms"}
                flags = list(r.get("flags") or [])
                runtimes = (r.get("device") or {}).get("runtimes") or info.get("runtimes") or {}
                row = Result(
                    run_id=run.id, device_id=device.id, artifact_sha256=art.sha256,
                    created=r.get("created") or when, job_id=r.get("job_id"),
                    model=r.get("model") or "?", format=r.get("format") or "?",
                    precision=r.get("precision") or "?", runtime=r.get("runtime") or "?",
                    runtime_version=runtimes.get(r.get("runtime")), runtimes=runtimes,
                    threads=int(r.get("threads") or 1), median_ms=lat.get("median_ms"),
                    p90_ms=lat.get("p90_ms"), min_ms=lat.get("min_ms"), count=lat.get("count"),
                    sittings=len(sittings), flagged=bool(flags), flags=flags, latency=lat,
                    memory=r.get("memory"), load_ms=r.get("load_ms"),
                    measured_by=r.get("measured_by"), device_state=r.get("device_state"),
                    replicability=r.get("replicability"), per_op=r.get("per_op"),
                    per_op_source=r.get("per_op_source"))
                session.add(row)
                session.flush()
                session.add_all(Sitting(result_id=row.id, **s) for s in sittings)
                ids.append(row.id)
        return RecordedRun(run.id, ids, skipped)


# --- reading -----------------------------------------------------------------------------------
@dataclass
class ResultRow:
    """A result as history and diff read it (no raw times: those are :func:`sittings_of`)."""

    id: int
    run_id: int
    created: float
    device: str
    hostname: str
    fingerprint: str
    identity_words: str | None
    model: str
    artifact: str
    sha256: str
    format: str
    precision: str
    runtime: str
    runtime_version: str | None
    threads: int
    median_ms: float | None
    p90_ms: float | None
    min_ms: float | None
    count: int | None
    sittings: int
    flagged: bool
    flags: list[str]

    def config_words(self) -> str:
        version = self.runtime_version or "?"
        said = version if version.startswith(self.runtime) or " " in version else \
            f"{self.runtime} {version}"
        return f"{self.model} {self.format} {self.precision} ×{self.threads} ({said})"


_COLUMNS = (Result.id, Result.run_id, Result.created, Device.name, Device.hostname,
            Device.fingerprint, Device.identity_words, Result.model, Artifact.file,
            Artifact.sha256, Result.format, Result.precision, Result.runtime,
            Result.runtime_version, Result.threads, Result.median_ms, Result.p90_ms,
            Result.min_ms, Result.count, Result.sittings, Result.flagged, Result.flags)


def query_results(store: Store, *, model: str | None = None, artifact: str | None = None,
                  device: str | None = None, runtime_version: str | None = None,
                  run_id: int | None = None, ids: list[int] | None = None,
                  threads: int | None = None, fmt: str | None = None,
                  precision: str | None = None, limit: int | None = None) -> list[ResultRow]:
    """Results, oldest first, filtered: ``artifact`` a sha256 prefix or a file name,
    ``device`` a device name, host name or fingerprint, ``runtime_version`` as the device
    reported it (``executorch==1.5.1`` also matches on the runtime). ``limit``: the newest."""
    q = sa.select(*_COLUMNS).join(Device, Result.device_id == Device.id).join(
        Artifact, Result.artifact_sha256 == Artifact.sha256)
    if model:
        q = q.where(Result.model == model)
    if artifact:
        q = q.where(sa.or_(Artifact.sha256.startswith(artifact.lower()),
                           Artifact.file == artifact))
    if device:
        q = q.where(sa.or_(Device.name == device, Device.hostname == device,
                           Device.fingerprint == device))
    if runtime_version:
        runtime, _, version = runtime_version.rpartition("==")
        if runtime:
            q = q.where(Result.runtime == runtime)
        # devices say "executorch 1.5.1" (the package and its version): either matches
        q = q.where(sa.or_(Result.runtime_version == version,
                           Result.runtime_version.endswith(f" {version}")))
    if run_id is not None:
        q = q.where(Result.run_id == run_id)
    if ids is not None:
        q = q.where(Result.id.in_(ids))
    if threads is not None:
        q = q.where(Result.threads == threads)
    if fmt:
        q = q.where(Result.format == fmt)
    if precision:
        q = q.where(Result.precision == precision)
    if limit:
        q = q.order_by(Result.created.desc(), Result.id.desc()).limit(limit)
    else:
        q = q.order_by(Result.created, Result.id)
    with store.session() as session:
        rows = [ResultRow(*row[:-1], flags=list(row[-1] or []))
                for row in session.execute(q).all()]
    return sorted(rows, key=lambda r: (r.created, r.id)) if limit else rows


def sittings_of(store: Store, result_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Every sitting of these results (raw times, flags, reference), in order."""
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in result_ids}
    with store.session() as session:
        for s in session.scalars(sa.select(Sitting).where(Sitting.result_id.in_(result_ids))
                                 .order_by(Sitting.result_id, Sitting.number)):
            out[s.result_id].append({"number": s.number, "job_id": s.job_id, "time": s.time,
                                     "median_ms": s.median_ms, "raw_ms": s.raw_ms,
                                     "flags": s.flags or [], "reference": s.reference})
    return out


def details_of(store: Store, result_id: int) -> dict[str, Any]:
    """The deferred parts of a result: per-op table, device state, latency, memory."""
    with store.session() as session:
        r = session.get(Result, result_id)
        if r is None:
            raise EdgepipeError(f"no result #{result_id} in {store.url}")
        return {"per_op": r.per_op, "per_op_source": r.per_op_source,
                "device_state": r.device_state, "latency": r.latency, "memory": r.memory}


def run_ids_of_folder(store: Store, folder: Path) -> list[int]:
    with store.session() as session:
        return list(session.scalars(sa.select(Run.id).where(
            Run.folder == str(Path(folder).resolve()))))
