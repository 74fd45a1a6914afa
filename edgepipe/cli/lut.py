"""Latency-table commands: ``lut collect|evaluate|predict|check|list``, and the table check
every command that predicts latency runs first."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EdgepipeError
from .device import cpu_list, device_info


def target_args(p: argparse.ArgumentParser) -> None:
    """Which latency: a device, and the runtime, precision and threads measured there."""
    p.add_argument("--device", default="this-machine",
                   help="a registered device, or this-machine (an agent started here; "
                        "default)")
    p.add_argument("--runtime", choices=["executorch", "litert"], default="executorch")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--threads", type=int, default=1)


def _add_lut(sub: argparse._SubParsersAction) -> None:
    lut = sub.add_parser("lut", help="latency lookup tables: collect on a device, predict, "
                                     "evaluate").add_subparsers(dest="lut_command", required=True)

    p = lut.add_parser("collect", help="measure every unit of a search space on a device")
    target_args(p)
    p.add_argument("--space", default="default",
                   help="default, tiny, or a JSON file of SearchSpace fields")
    p.add_argument("--out", type=Path, help="table file (default: EDGEPIPE_HOME/tables/"
                                            "<fingerprint>-<runtime>-<precision>-t<N>.json)")
    p.add_argument("--jobs", type=int, default=2, help="conversions in parallel (default 2)")
    p.add_argument("--calibration", type=int, default=12,
                   help="whole networks measured to fit the per-model overhead (default 12)")
    p.add_argument("--batch", type=int, default=480,
                   help="units per agent job; the table is saved after each (default 480)")
    p.set_defaults(func=_run_lut_collect)

    p = lut.add_parser("evaluate", help="measure random networks whole and compare with the "
                                        "table's predictions")
    p.add_argument("--table", type=Path, required=True)
    p.add_argument("--device", default="this-machine")
    p.add_argument("--count", type=int, default=100, help="networks (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive", type=int, default=10,
                   help="networks also predicted by a naive per-op sum (default 10)")
    p.add_argument("--out", type=Path, default=Path("out/lut-eval"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--force", action="store_true",
                   help="evaluate on a device the table was not measured on")
    p.set_defaults(func=_run_lut_evaluate)

    p = lut.add_parser("check", help="measure a table's sentinels on the device again and "
                                     "say whether the table still holds (exit 1 if not)")
    p.add_argument("--table", type=Path, help="default: the table for the target (collected "
                                              "here, or shipped)")
    target_args(p)
    p.add_argument("--affinity", help="CPUs the sentinels run on, e.g. 0")
    p.add_argument("--jobs", type=int, default=2, help="conversions in parallel (default 2)")
    p.add_argument("--force", action="store_true",
                   help="check a table measured for another device or settings")
    p.set_defaults(func=_run_lut_check)

    p = lut.add_parser("predict", help="predicted latency of a network from a table, checked "
                                       "on the device first")
    p.add_argument("--arch", default="large",
                   help="large, small (MobileNetV3 seeds) or a JSON architecture file")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--table", type=Path, help="default: the table for the target (collected "
                                              "here, or shipped)")
    target_args(p)
    p.add_argument("--force", action="store_true",
                   help="use a table measured for another device or settings")
    check_policy_args(p)
    p.set_defaults(func=_run_lut_predict)

    p = lut.add_parser("list", help="tables collected here and shipped with edgepipe")
    p.set_defaults(func=_run_lut_list)


def check_policy_args(p: argparse.ArgumentParser) -> None:
    """What to do when the table's check finds drift (default: warn and go on)."""
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--strict", dest="on_drift", action="store_const", const="strict",
                        help="refuse when the table's sentinels drifted over 5 %%")
    policy.add_argument("--rescale", dest="on_drift", action="store_const", const="rescale",
                        help="multiply predictions by the drift the check measured (said so)")
    policy.add_argument("--recollect", dest="on_drift", action="store_const",
                        const="recollect", help="collect the table again on the device when "
                                                "it drifted, and use the new one")
    policy.add_argument("--no-check", dest="on_drift", action="store_const", const="skip",
                        help="do not check the table on the device (the result says so)")
    p.set_defaults(on_drift="warn")
    p.add_argument("--check-max-age", type=float, default=60.0, metavar="MINUTES",
                   help="reuse a check of this device and runtime younger than this "
                        "(default 60; 0: always measure)")


def _run_lut_collect(args: argparse.Namespace) -> int:
    from ..host.local import open_device
    from ..host.registry import config_home
    from ..latency_tables.collect import CollectRequest, MeasureSettings, collect
    from ..latency_tables.table import Target, table_name
    from ..models.space import load_space
    from ..ui import PhaseProgress, console

    space = load_space(args.space)
    home = config_home()
    workdir = home / "lut-work" / space.digest()[:12]  # programs cached for a resumed run
    with open_device(args.device, workdir) as client:  # a local agent keeps its data there
        info = client.info()
        target = Target(info["fingerprint"], args.runtime, args.precision, args.threads,
                        info.get("identity"))
        out = args.out or home / "tables" / table_name(target)
        req = CollectRequest(space, args.runtime, args.precision, args.threads, out, workdir,
                             args.jobs, args.calibration, MeasureSettings(batch=args.batch))
        with PhaseProgress() as progress:
            table = collect(req, client, progress)
    times = table.method["collection_s"]
    ref = table.reference
    console.print(f"{len(table.units)} units ({times['programs']} programs) for "
                  f"{table.describe()}: converted in {times['convert']:.0f} s, measured in "
                  f"{times['measure']:.0f} s, {times['total']:.0f} s in all")
    fit = table.overhead
    console.print(f"overhead fit on {len(fit.models)} networks: measured ≈ {fit.scale:.3f} × "
                  f"Σunits + {fit.boundary_ms_per_m:.3f} ms × M boundary elements + "
                  f"{fit.offset_ms:.3f} ms; "
                  f"reference unit: {ref['references']} checks, {ref['disturbed_references']} "
                  f"found the device slower and their units were measured again"
                  + (f" [bold red](FLAGGED: {ref['unsettled_segments']} segment(s) never "
                     "settled)" if ref.get("flagged") else ""))
    console.print("sentinels: " + "; ".join(f"{s['name']} {s['median_ms']:.3f} ms"
                                            for s in table.sentinels))
    flags = table.method.get("device_state_flags") or []
    if flags:
        console.print(f"[bold red]device state flagged in {len(flags)} job(s)[/]: {flags[0]}")
    console.print(f"wrote {out}")
    return 0


def _run_lut_evaluate(args: argparse.Namespace) -> int:
    from ..host.local import open_device
    from ..host.registry import config_home
    from ..latency_tables.evaluate import EvaluateRequest, evaluate
    from ..latency_tables.table import LatencyTable, Target
    from ..models.space import SearchSpace
    from ..ui import PhaseProgress, console

    table = LatencyTable.load(args.table)
    workdir = config_home() / "lut-work" / SearchSpace.from_dict(table.space).digest()[:12]
    with open_device(args.device, workdir) as client:
        info = client.info()
        table.check_target(Target(info["fingerprint"], table.runtime, table.precision,
                                  table.threads, info.get("identity")), args.force)
        req = EvaluateRequest(args.table, args.out, workdir, args.count, args.seed,
                              args.naive, args.jobs)
        with PhaseProgress() as progress:
            report = evaluate(req, client, progress)
    for name, label in (("prediction", "units + overhead"),
                        ("prediction_rescaled", "rescaled by check"),
                        ("unit_sum_without_overhead", "units, raw sum"),
                        ("naive_per_op_sum", "naive per-op sum"),
                        ("repeatability", "pass 2 vs pass 1")):
        m = report[name] or {}
        if m.get("count"):
            console.print(f"{label:>18}: {m['count']} networks, within ±5 % "
                          f"{m['within_5pct']:.1%}, ±10 % {m['within_10pct']:.1%}, RMSE "
                          f"{m['rmse_pct']:.2f} %, Kendall tau {m['kendall_tau']:.3f}")
    console.print(f"wrote {args.out}/evaluation.json and scatter.png")
    return 0


def _find_table(args: argparse.Namespace, info: dict, own_settings: bool = False):
    """The table for --device/--runtime/--precision/--threads (or --table), fitted to the
    device (refused with the fields that differ, unless --force). ``own_settings``: a table
    given with --table is compared on its device only (`lut check`)."""
    from ..host.registry import config_home
    from ..latency_tables.table import LatencyTable, Target, find_table, known_tables

    target = Target(info["fingerprint"], args.runtime, args.precision, args.threads,
                    info.get("identity"))
    path = args.table or find_table(target, config_home())
    if path is None:
        shipped = [p for p in known_tables(config_home()) if f"-{args.runtime}-" in p.name]
        if not shipped or not args.force:
            raise EdgepipeError(
                f"no latency table for {args.device} ({info.get('identity_words')}; "
                f"{args.runtime} {args.precision}, {args.threads} thread(s)): collect one with "
                "`edgepipe lut collect`, or pass --force to use a table measured on another "
                "device")
        path = shipped[0]
    table = LatencyTable.load(path)
    if args.table is not None and own_settings:
        target = Target(target.fingerprint, table.runtime, table.precision, table.threads,
                        target.identity)
    table.check_target(target, args.force)
    return table, Path(path)


def table_use(args: argparse.Namespace):
    """The table, checked on the device as --strict/--rescale/--recollect/--no-check say (a
    recent check of the same device reused): a :class:`TableUse`."""
    from contextlib import ExitStack

    from ..host.local import open_device
    from ..host.registry import config_home
    from ..latency_tables.sentinels import (
        apply_policy,
        check_table,
        check_words,
        needs_recollection,
        use_table,
    )
    from ..latency_tables.table import Target
    from ..models.space import SearchSpace
    from ..ui import PhaseProgress, console

    info = device_info(args.device)
    table, path = _find_table(args, info)
    home = config_home()
    workdir = home / "lut-work" / SearchSpace.from_dict(table.space).digest()[:12]

    def measure() -> dict:
        with ExitStack() as stack:
            client = stack.enter_context(open_device(args.device, workdir))
            progress = stack.enter_context(PhaseProgress())
            return check_table(table, client, workdir, getattr(args, "jobs", 2), progress)

    use = use_table(path, table, args.on_drift, info, home, args.check_max_age * 60, measure)
    if needs_recollection(use):
        if use.check is not None:
            console.print(f"[yellow]{check_words(use.check)}: collecting the table again")
        target = Target(info["fingerprint"], table.runtime, table.precision, table.threads,
                        info.get("identity"))
        return _recollect(args, table, target, use)
    return apply_policy(use)


def _recollect(args: argparse.Namespace, stale, target, use):
    """--recollect: the stale table's space collected again on the device."""
    from ..host.local import open_device
    from ..host.registry import config_home
    from ..latency_tables.collect import recollect
    from ..models.space import SearchSpace
    from ..ui import PhaseProgress, console

    home = config_home()
    workdir = home / "lut-work" / SearchSpace.from_dict(stale.space).digest()[:12]
    with open_device(args.device, workdir) as client, PhaseProgress() as progress:
        fresh = recollect(stale, target, client, home, workdir, use, progress)
    console.print(f"wrote {fresh.path}")
    return fresh


def _run_lut_predict(args: argparse.Namespace) -> int:
    from ..latency_tables.estimate import Estimator
    from ..models.space import SearchSpace, load_architecture
    from ..ui import console

    use = table_use(args)
    space = SearchSpace.from_dict(use.table.space)
    if args.arch in ("large", "small"):
        arch = space.seed_architecture(args.arch, args.resolution, args.width)
    else:
        arch, _ = load_architecture(args.arch)
    est = Estimator(use.table, use.factor, use.record())
    share = est.measured_share(arch)
    for warning in use.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    console.print(f"{args.arch} @ {arch.resolution}: predicted {est.predict(arch):.3f} ms"
                  + ("" if share == 1 else f" ({share:.0%} of its units measured, the rest "
                     "estimated from the nearest measured ones)") + f"; {use.words()}")
    return 0


def _run_lut_check(args: argparse.Namespace) -> int:
    from ..host.local import open_device
    from ..host.registry import config_home
    from ..latency_tables.sentinels import check_table, check_words, record_check
    from ..models.space import SearchSpace
    from ..ui import PhaseProgress, console

    info = device_info(args.device)
    table, path = _find_table(args, info, own_settings=True)
    home = config_home()
    workdir = home / "lut-work" / SearchSpace.from_dict(table.space).digest()[:12]
    with open_device(args.device, workdir) as client, PhaseProgress() as progress:
        check = check_table(table, client, workdir, args.jobs, progress,
                            affinity=cpu_list(args.affinity))
    written = record_check(path, table, check, home)
    for s in check["sentinels"]:
        console.print(f"  {s['name']}: {s['then_ms']:.3f} ms at collection, {s['now_ms']:.3f} "
                      f"ms now (×{s['ratio']:.3f}; passes "
                      f"{', '.join(f'{v:.3f}' for v in s['passes_ms'])})")
    color = "green" if check["verdict"] == "ok" else "bold red"
    console.print(f"[{color}]{check['verdict'].upper()}[/] — {check_words(check)} "
                  f"(factor ×{check['factor']:.3f}, spread {check['spread_pct']:.1f} %, "
                  f"{check['seconds']:.0f} s)")
    console.print(f"recorded in {written}")
    return 0 if check["verdict"] == "ok" else 1


def _run_lut_list(args: argparse.Namespace) -> int:
    from ..errors import EdgepipeError
    from ..host.registry import config_home
    from ..latency_tables.sentinels import recorded_checks
    from ..latency_tables.table import LatencyTable, known_tables
    from ..ui import console

    home = config_home()
    for path in known_tables(home):
        try:
            table = LatencyTable.load(path)
        except EdgepipeError as exc:
            console.print(f"{path}: [red]{exc}")
            continue
        checks = recorded_checks(path, table, home)
        if checks:
            last = checks[-1]
            checked = (f"last checked {_age(last['time'])} ago on "
                       f"{last['device'].get('hostname')}: {last['verdict']} "
                       f"(×{last['factor']:.3f})")
        else:
            checked = "never checked" if table.sentinels else \
                "cannot be checked (no sentinels: collect it again)"
        console.print(f"{path}: {len(table.units)} units, {table.describe()}; collected "
                      f"{_age(table.created)} ago; {checked}")
    return 0


def _age(then: float) -> str:
    import time

    seconds = max(0.0, time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"

