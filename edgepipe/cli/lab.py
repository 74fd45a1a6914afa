"""The device lab's commands: ``history`` (and ``history import``), ``diff``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DB_HELP = ("the results database (default: $EDGEPIPE_DB, else SQLite at "
           "EDGEPIPE_HOME/results.db)")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="a device name, host name or fingerprint")
    p.add_argument("--model", help="a model name, e.g. mobilenet_v3_small")
    p.add_argument("--threads", type=int, help="results measured with this many threads")
    p.add_argument("--format", dest="fmt", choices=["executorch", "tflite"])
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    p.add_argument("--db", help=DB_HELP)


def _add_history(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "history", help="stored results by model, artifact, device and runtime version, with "
                        "their trend (HTML)",
        description="Every result edgepipe measured (run, profile, imported run folders) is "
                    "kept in the results database. This lists them, oldest first, and writes "
                    "their trend over time as an HTML page.")
    _filters(p)
    p.add_argument("--artifact", help="an artifact's sha256 prefix or file name")
    p.add_argument("--runtime-version", metavar="[RUNTIME==]VERSION",
                   help="as the device reported it, e.g. executorch==1.5.1")
    p.add_argument("--last", type=int, metavar="N", help="only the newest N results")
    p.add_argument("--rows", type=int, default=25,
                   help="newest results printed here (default 25; the page has them all)")
    p.add_argument("--html", type=Path, default=Path("out/history.html"),
                   help="where to write the trend page (default out/history.html)")
    p.set_defaults(func=_run_history)
    actions = p.add_subparsers(dest="history_command")
    imp = actions.add_parser("import", help="take run folders (`edgepipe run -o FOLDER`) into "
                                            "the results database")
    imp.add_argument("folders", nargs="+", type=Path,
                     help="run folders, or folders of run folders")
    imp.add_argument("--db", help=DB_HELP, default=argparse.SUPPRESS)
    imp.set_defaults(func=_run_history_import)


def _add_diff(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff", help="is B slower than A? the ratio of medians with a 95 %% interval and a "
                     "verdict, per-op",
        description="Compare two stored selections on the same device: two runs (run:ID or a "
                    "run folder), two artifacts (a file or sha256:PREFIX), two runtime "
                    "versions (executorch==1.5.0 executorch==1.5.1), or two results (their "
                    "numbers in `edgepipe history`). "
                    "The interval comes from the sittings of each side (a mixed model on log "
                    "run times: the sittings' log medians, Student's t with the sitting "
                    "variance pooled); where the device's reference sentinels were measured "
                    "before each sitting (two or more sittings a side), the drift between "
                    "the sides beyond the references' own noise is divided out. A sitting "
                    "over 5 % above its side's fastest is left out as disturbed. "
                    "Results measured while the device state was flagged are refused.")
    p.add_argument("a", help="the baseline")
    p.add_argument("b", help="what is compared with it")
    _filters(p)
    p.add_argument("--force", action="store_true",
                   help="compare results of different devices, runtimes or precisions")
    p.add_argument("--no-drift", action="store_true",
                   help="leave the device's drift between sittings out of the model")
    p.add_argument("--json", type=Path, help="also write the comparison as JSON")
    p.set_defaults(func=_run_diff)


def _store(args: argparse.Namespace):
    from ..lab.store import open_store

    return open_store(args.db)


def _run_history(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..lab.history import when, write_history_html
    from ..lab.store import query_results
    from ..ui import console

    began = time.perf_counter()
    with _store(args) as store:
        rows = query_results(store, model=args.model, artifact=args.artifact,
                             device=args.device, runtime_version=args.runtime_version,
                             threads=args.threads, fmt=args.fmt, precision=args.precision,
                             limit=args.last)
        url = store.url
    filters = {"model": args.model, "artifact": args.artifact, "device": args.device,
               "runtime version": args.runtime_version, "threads": args.threads,
               "format": args.fmt, "precision": args.precision}
    if not rows:
        console.print(f"no results stored in {url}"
                      + (" with these filters" if any(filters.values()) else "")
                      + ": `edgepipe run` and `edgepipe profile` store theirs, "
                        "`edgepipe history import FOLDER` takes older run folders in")
        return 0
    table = Table(title=f"{len(rows)} results in {url}")
    for col in ("#", "when", "device", "model", "artifact", "runtime", "threads",
                "median ms", "p90 ms", "sittings", "state"):
        table.add_column(col, justify="right" if col in ("#", "threads", "median ms",
                                                          "p90 ms", "sittings") else "left",
                         overflow="fold")
    for r in rows[-args.rows:] if args.rows > 0 else []:
        table.add_row(str(r.id), when(r.created), r.device, r.model,
                      f"{r.artifact} {r.sha256[:8]}", f"{r.runtime} {r.runtime_version}",
                      str(r.threads), _ms(r.median_ms), _ms(r.p90_ms), str(r.sittings),
                      "[bold red]FLAGGED[/]" if r.flagged else "steady")
    console.print(table)
    if len(rows) > args.rows:
        console.print(f"(the newest {args.rows} of {len(rows)} shown; the page has them all)")
    args.html.parent.mkdir(parents=True, exist_ok=True)
    write_history_html(rows, args.html, "edgepipe history", filters)
    console.print(f"wrote {args.html} (trend of {len(rows)} results; "
                  f"{time.perf_counter() - began:.2f} s)")
    return 0


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _run_history_import(args: argparse.Namespace) -> int:
    from ..lab.imports import import_run, run_folders
    from ..ui import console

    folders = [f for given in args.folders for f in run_folders(given)]  # all checked first
    with _store(args) as store:
        for folder in folders:
            done = import_run(store, folder)
            if done.already:
                console.print(f"{folder}: already stored (run {done.run_id})")
            else:
                skipped = f", {done.skipped} already stored" if done.skipped else ""
                console.print(f"{folder}: {len(done.result_ids)} results stored as run "
                              f"{done.run_id}{skipped}")
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    import json

    from ..lab.diff import run_diff, select
    from ..manifest import write_atomic
    from ..ui import console

    filters = {"device": args.device, "model": args.model, "threads": args.threads,
               "fmt": args.fmt, "precision": args.precision}
    with _store(args) as store:
        a = select(store, args.a, filters)
        b = select(store, args.b, filters)
        pairs = run_diff(store, a, b, args.force, not args.no_drift)
    out = []
    for pair in pairs:
        c = pair.comparison
        assert c is not None
        ids = lambda rows: ",".join(f"#{r.id}" for r in rows)  # noqa: E731
        console.print(f"[bold]{pair.label()}[/] (A {ids(pair.a)}, B {ids(pair.b)})")
        for what in pair.differs:
            console.print(f"  [yellow]compared with --force although they differ:[/] {what}")
        color = "bold red" if c.low > 1 else "green" if c.high < 1 else "default"
        console.print(f"  B is [{color}]{c.verdict()}[/]")
        drift = (f"device drift between sittings {min(c.drift_pct):+.1f} to "
                 f"{max(c.drift_pct):+.1f} % (reference sentinels)" if c.drift_pct else
                 "drift between sittings unknown (" + ("--no-drift" if args.no_drift else
                                                      "sittings without reference") + ")")
        console.print(f"  from {c.basis}; {drift}")
        for m in pair.per_op[:10]:
            change = (f"{m['change_pct']:+.0f} %" if m["change_pct"] is not None
                      else m["what"])
            console.print(f"    {m['op']}: {_ms(m['a_ms'])} → {_ms(m['b_ms'])} ms ({change})")
        if pair.per_op_note:
            console.print(f"  [dim]per-op: {pair.per_op_note}"
                          + ("; none moved" if not pair.per_op and "one profiled" in
                             pair.per_op_note else ""))
        out.append({"label": pair.label(), "a": [r.id for r in pair.a],
                    "b": [r.id for r in pair.b], "differs": pair.differs,
                    "comparison": c.to_dict(), "per_op": pair.per_op})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.json, json.dumps(out, indent=1))
        console.print(f"wrote {args.json}")
    return 0


def check_db_now() -> None:
    """Open the results database (migrating it), or fail in one line before any work."""
    from ..lab.store import open_store

    open_store().close()



