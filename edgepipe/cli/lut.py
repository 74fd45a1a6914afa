"""Latency-table commands: ``lut collect|adapt|evaluate|predict|check|list``, and the table
check every command that predicts latency runs first."""

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
    p.add_argument("--runtime", choices=["executorch", "litert"], default="executorch",
                   help="the runtime measured (default executorch: XNNPACK)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="the programs' precision (default fp32)")
    p.add_argument("--threads", type=int, default=1, help="threads the runtime uses (default 1)")


def _add_lut(sub: argparse._SubParsersAction) -> None:
    lut = sub.add_parser("lut", help="latency lookup tables: collect on a device, predict, "
                                     "evaluate").add_subparsers(dest="lut_command", required=True)

    p = lut.add_parser("collect", help="measure every unit of a search space on a device",
                       description="Measure every unit of a search space on a device. "
                                   "--device a,b,...: on several identical devices at once "
                                   "(one fingerprint), the units shared among them, each "
                                   "device's reference unit bringing its times to one scale; "
                                   "a device that drops out loses only its job in hand.")
    target_args(p)
    p.add_argument("--space", default="default",
                   help="default (MobileNetV3), tiny, mobilenet_v2 (the units NetAdapt needs "
                        "from a trained MobileNetV2), or a JSON file of SearchSpace fields")
    p.add_argument("--out", type=Path, help="table file (default: EDGEPIPE_HOME/tables/"
                                            "<fingerprint>-<runtime>-<precision>-t<N>.json)")
    p.add_argument("--jobs", type=int, default=2, help="conversions in parallel (default 2)")
    p.add_argument("--calibration", type=int, default=10,
                   help="whole networks (the seeds and random ones) the network model is "
                        "fitted on, each at every resolution of the space (default 10)")
    p.add_argument("--batch", type=int, default=480,
                   help="units per agent job; the table is saved after each (default 480)")
    p.set_defaults(func=_run_lut_collect)

    p = lut.add_parser(
        "adapt", help="a table for a new device, runtime, precision or thread count from "
                      "existing tables and minutes of measurement on the device",
        description="Measure a subset of the space's units and a few whole networks on the "
                    "device within --budget-s seconds, learn how the device differs from the "
                    "source tables (the ratio target/source per unit, by its shape: "
                    "extremely randomised trees or ridge regression, the most similar source "
                    "as base, LitePred-style), and write a table in which every unit is "
                    "marked measured or transferred with its expected error. Conversion is "
                    "on the host and not counted; programs converted before are reused.")
    p.add_argument("--from", dest="sources", required=True, metavar="TABLE[,TABLE...]",
                   help="source tables of one search space (another CPU, runtime, precision "
                        "or thread count): files, names `lut list` shows, or `shipped` (every "
                        "table shipped with edgepipe)")
    target_args(p)
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="seconds of measurement on the device (default 120)")
    p.add_argument("--out", type=Path, help="table file (default: EDGEPIPE_HOME/tables/"
                                            "<fingerprint>-<runtime>-<precision>-t<N>.json)")
    p.add_argument("--networks", type=int, default=4,
                   help="random whole networks measured beside the two seeds (default 4)")
    p.add_argument("--jobs", type=int, default=2, help="conversions in parallel (default 2)")
    p.add_argument("--seed", type=int, default=0, help="of the measurement order")
    p.add_argument("--units", type=int, dest="max_units",
                   help="measure at most this many units (default: as many as the budget "
                        "holds)")
    p.set_defaults(func=_run_lut_adapt)

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
    p.add_argument("--sittings", type=int, default=2,
                   help="passes over all networks, minutes apart; each network's runs of "
                        "every pass are pooled (default 2)")
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

    p = lut.add_parser(
        "predict", help="predicted latency of a network from a table, checked on the device "
                        "first",
        description="The median latency of the network's runs on the device, with the 95 % "
                    "interval the table's own errors give it (its cross-validation, or its "
                    "last `lut evaluate`). --p90 adds the 90th percentile of runs (the "
                    "statistic MLPerf Mobile reports), --best-case the fastest run.")
    p.add_argument("--arch", default="large",
                   help="large, small (MobileNetV3 seeds), v2 (MobileNetV2: a table of its "
                        "space) or a JSON architecture file")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--table", type=Path, help="default: the table for the target (collected "
                                              "here, or shipped)")
    target_args(p)
    p.add_argument("--p90", action="store_true",
                   help="also the 90th percentile of runs, with its interval")
    p.add_argument("--best-case", action="store_true",
                   help="also the fastest run (what a quiet device does at best)")
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


def device_names(text: str) -> list[str]:
    """--device a,b,c: the names, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise EdgepipeError(f"--device {text!r}: give device names separated by commas, each "
                            "once")
    return names


def _run_lut_collect_several(args: argparse.Namespace, names: list[str]) -> int:
    from contextlib import ExitStack

    from ..host.local import LOCAL, open_device
    from ..host.registry import config_home, get_device
    from ..latency_tables.collect import CollectRequest, MeasureSettings
    from ..latency_tables.several import collect_several, spread_words
    from ..latency_tables.table import Target, table_name
    from ..models.space import load_space
    from ..ui import PhaseProgress, console

    space = load_space(args.space)
    for name in names:  # a typo fails now
        if name != LOCAL:
            get_device(name)
    home = config_home()
    workdir = home / "lut-work" / space.digest()[:12]
    with ExitStack() as stack:
        clients = {n: stack.enter_context(open_device(n, workdir)) for n in names}
        info = clients[names[0]].info()
        target = Target(info["fingerprint"], args.runtime, args.precision, args.threads,
                        info.get("identity"))
        out = args.out or home / "tables" / table_name(target, space.family)
        req = CollectRequest(space, args.runtime, args.precision, args.threads, out, workdir,
                             args.jobs, args.calibration, MeasureSettings(batch=args.batch))
        with PhaseProgress() as progress:
            table = collect_several(req, clients, progress)
    times = table.method["collection_s"]
    console.print(f"{len(table.units)} units ({times['programs']} programs) for "
                  f"{table.describe()} on {len(names)} devices: converted in "
                  f"{times['convert']:.0f} s, measured in {times['measure']:.0f} s, "
                  f"{times['total']:.0f} s in all")
    per = table.method.get("units_per_device") or {}
    console.print("units measured: " + ", ".join(f"{n} {per.get(n, 0)}" for n in names)
                  + (f"; {spread_words(table)}, each device's times scaled to "
                     f"{table.method.get('scale_device')}'s" if spread_words(table) else ""))
    for name, why in (table.method.get("dropped_devices") or {}).items():
        console.print(f"[yellow]{name} dropped out:[/] {why} (its unfinished job went to the "
                      "others)")
    console.print(f"network model: {table.network_model.describe()}")
    console.print(f"  left-out networks: {model_words(table.network_model)}")
    flags = table.method.get("device_state_flags") or []
    if flags:
        console.print(f"[bold red]device state flagged in {len(flags)} job(s)[/]: {flags[0]}")
    console.print(f"wrote {out}")
    return 0


def _run_lut_collect(args: argparse.Namespace) -> int:
    names = device_names(args.device)
    if len(names) > 1:
        return _run_lut_collect_several(args, names)
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
        out = args.out or home / "tables" / table_name(target, space.family)
        req = CollectRequest(space, args.runtime, args.precision, args.threads, out, workdir,
                             args.jobs, args.calibration, MeasureSettings(batch=args.batch))
        with PhaseProgress() as progress:
            table = collect(req, client, progress)
    times = table.method["collection_s"]
    ref = table.reference
    console.print(f"{len(table.units)} units ({times['programs']} programs) for "
                  f"{table.describe()}: converted in {times['convert']:.0f} s, measured in "
                  f"{times['measure']:.0f} s, {times['total']:.0f} s in all")
    model = table.network_model
    console.print(f"network model: {model.describe()}")
    console.print(f"  left-out networks: {model_words(model)}")
    ways = (f" ({ref['slower_references']} slower, {ref['faster_references']} faster)"
            if "slower_references" in ref else "")
    noise = (f" (3 × its noise {ref['noise_pct']:g} %, within {ref['limit_floor_pct']:g}–"
             f"{ref['limit_cap_pct']:g} %)" if ref.get("noise_pct") is not None else "")
    console.print(f"reference unit: {ref['references']} checks, "
                  f"{ref['disturbed_references']} more than {ref['limit_pct']:g} %{noise} off "
                  f"its usual time{ways}: the units beside them were measured again"
                  + (f" [bold red](FLAGGED: {ref['unsettled_segments']} segment(s) never "
                     "settled)" if ref.get("flagged") else ""))
    console.print("sentinels: " + "; ".join(f"{s['name']} {s['median_ms']:.3f} ms"
                                            for s in table.sentinels))
    flags = table.method.get("device_state_flags") or []
    if flags:
        console.print(f"[bold red]device state flagged in {len(flags)} job(s)[/]: {flags[0]}")
    console.print(f"wrote {out}")
    return 0


def model_words(model) -> str:
    """The network model's left-out errors in one line: shares, RMSE, trend with size."""
    from ..latency_tables.model import error_summary

    measured = [n["median_ms"] for n in model.networks]
    m = error_summary(model.median.loo_errors, measured)
    p = error_summary(model.p90_loo_errors)
    if not m["count"]:
        return "too few networks to leave one out"
    trend = m.get("size_trend")
    trend_words = (f"; error vs size {trend['pct_per_doubling']:+.1f} points per doubling"
                   if trend else "")
    return (f"median within ±5 % {m['within_5pct']:.0%}, ±10 % {m['within_10pct']:.0%} (RMSE "
            f"{m['rmse_pct']:.1f} %); p90 within ±10 % {p.get('within_10pct', 0):.0%}"
            f"{trend_words} ({m['count']} networks)")


def _run_lut_adapt(args: argparse.Namespace) -> int:
    from ..host.local import open_device
    from ..host.registry import config_home
    from ..latency_tables.adapt import AdaptRequest, adapt, load_sources
    from ..latency_tables.table import Target, resolve_tables, table_name
    from ..ui import PhaseProgress, console

    sources = resolve_tables(args.sources, config_home())
    _, space = load_sources(sources)  # bad sources: one line before any device work
    if args.budget_s <= 0:
        raise EdgepipeError(f"--budget-s {args.budget_s:g}: give seconds of measurement, "
                            "e.g. 120")
    home = config_home()
    workdir = home / "lut-work" / space.digest()[:12]
    with open_device(args.device, workdir) as client:
        info = client.info()
        target = Target(info["fingerprint"], args.runtime, args.precision, args.threads,
                        info.get("identity"))
        out = args.out or home / "tables" / table_name(target, space.family)
        req = AdaptRequest(sources, args.runtime, args.precision, args.threads, out, workdir,
                           args.budget_s, args.jobs, args.networks, args.seed, args.max_units)
        with PhaseProgress() as progress:
            table = adapt(req, client, progress)
    a = table.adapted
    cv = a["transfer_cv"]
    console.print(f"{a['measured_units']} of {a['units']} units measured on "
                  f"{table.describe()} in {a['measurement_s']:.0f} s of the "
                  f"{a['budget_s']:g} s budget (conversion "
                  f"{table.method['collection_s']['convert']:.0f} s); the rest transferred "
                  f"from {a['base']} by {a['regressor']}")
    if cv.get("network_rmse_pct"):  # which regressor, and why
        console.print("  chosen by the networks measured whole (each architecture left out): "
                      "RMSE " + ", ".join(f"{k} {v:.1f} %" for k, v in
                                          cv["network_rmse_pct"].items()))
    console.print(f"  measured units left out of the ratio model: within ±5 % "
                  f"{cv['within_5pct']:.0%}, ±10 % {cv['within_10pct']:.0%} (one global "
                  f"factor: ±10 % {cv['global_factor_within_10pct']:.0%})")
    console.print(f"network model: {table.network_model.describe()}")
    console.print(f"  left-out networks: {model_words(table.network_model)}")
    for note in a["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for flag in table.method.get("device_state_flags") or []:
        console.print(f"[bold red]flagged:[/] {flag}")
    console.print(f"wrote {out}")
    return 0


def _run_lut_evaluate(args: argparse.Namespace) -> int:
    from ..host.local import open_device
    from ..host.registry import config_home
    from ..latency_tables.evaluate import AGREE_PCT, EvaluateRequest, evaluate
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
                              args.naive, args.jobs, args.sittings)
        with PhaseProgress() as progress:
            report = evaluate(req, client, progress)
    again = report.get("networks_measured_again", 0)
    console.print(f"measured: every network in {args.sittings} sittings, runs pooled"
                  + (f" ({again} measured once more, their sittings over "
                     f"{AGREE_PCT:g} % apart; {report['sittings_left_out']} disturbed "
                     "sitting(s) left out)" if again else "")
                  + f"; {report['provenance']}")
    for flag in report["table_flags"]:
        console.print(f"[bold red]the table was flagged while measured:[/] {flag}")
    for name, label in (("prediction", "median"),
                        ("prediction_p90", "p90"),
                        ("prediction_best", "best case"),
                        ("prediction_rescaled", "median rescaled by check"),
                        ("unit_sum_without_overhead", "units, raw sum"),
                        ("naive_per_op_sum", "naive per-op sum"),
                        ("repeatability", "sitting 2 vs 1 (median)"),
                        ("repeatability_p90", "sitting 2 vs 1 (p90)")):
        m = report.get(name) or {}
        if m.get("count"):
            console.print(f"{label:>25}: {m['count']} networks, within ±5 % "
                          f"{m['within_5pct']:.1%}, ±10 % {m['within_10pct']:.1%}, RMSE "
                          f"{m['rmse_pct']:.2f} %, mean {m['mean_error_pct']:+.2f} %, Kendall "
                          f"tau {m['kendall_tau']:.3f}")
    if report.get("interval_coverage") is not None:
        console.print(f"measured medians inside their predicted 95 % interval: "
                      f"{report['interval_coverage']:.1%}")
    trend = report["prediction"].get("size_trend")
    if trend:
        console.print(f"median error vs network size: {trend['pct_per_doubling']:+.2f} points "
                      f"per doubling (correlation {trend['correlation']:+.2f})")
    if report.get("prediction_p90"):
        from ..latency_tables.evaluate import evaluation_record
        from ..latency_tables.sentinels import record_evaluation

        written = record_evaluation(args.table, table, evaluation_record(report),
                                    config_home())
        console.print(f"recorded in {written}: later predictions take their intervals from it")
    console.print(f"wrote {args.out}/evaluation.json and scatter.png")
    return 0


def _find_table(args: argparse.Namespace, info: dict, own_settings: bool = False):
    """The table for --device/--runtime/--precision/--threads (or --table), fitted to the
    device (refused with the fields that differ, unless --force). ``own_settings``: a table
    given with --table is compared on its device only (`lut check`)."""
    from ..host.registry import config_home
    from ..latency_tables.table import (
        REFERENCE_TABLE,
        LatencyTable,
        Target,
        find_table,
        known_tables,
        table_family,
    )

    target = Target(info["fingerprint"], args.runtime, args.precision, args.threads,
                    info.get("identity"))
    # a search from MobileNetV2 asks for a table of V2's space (see table_name)
    family = getattr(args, "space_family", "v3")
    path = args.table or find_table(target, config_home(), family)
    if path is None:
        shipped = sorted((p for p in known_tables(config_home())
                          if f"-{args.runtime}-" in p.name and table_family(p) == family),
                         key=lambda p: p != REFERENCE_TABLE)  # edgepipe's own first
        if not shipped or not args.force:
            space = " --space mobilenet_v2" if family == "v2" else ""
            what = " of MobileNetV2's space" if family == "v2" else ""
            raise EdgepipeError(
                f"no latency table{what} for {args.device} ({info.get('identity_words')}; "
                f"{args.runtime} {args.precision}, {args.threads} thread(s)): collect one with "
                f"`edgepipe lut collect{space}`, or pass --force to use a table measured on "
                "another device")
        path = shipped[0]
    from ..latency_tables.sentinels import with_recorded_evaluation

    table = with_recorded_evaluation(Path(path), LatencyTable.load(path), config_home())
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
    from ..models.space import SEED_MODELS, SearchSpace, load_architecture, seed_family
    from ..ui import console

    if args.arch in SEED_MODELS:
        args.space_family, arch = seed_family(args.arch), None
    else:
        arch, _ = load_architecture(args.arch)
        args.space_family = arch.network.family  # which family's table to look for
    use = table_use(args)
    if arch is None:
        arch = SearchSpace.from_dict(use.table.space).seed_architecture(
            args.arch, args.resolution, args.width)
    est = Estimator(use.table, use.factor, use.record())
    prediction = est.prediction(arch)
    for warning in use.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    wanted = ("median",) + (("p90",) if args.p90 else ()) + \
        (("best",) if args.best_case else ())
    console.print(f"{args.arch} @ {arch.resolution}: predicted {prediction.words(wanted)}; "
                  f"{use.words()}")
    return 0


def _run_lut_check(args: argparse.Namespace) -> int:
    names = device_names(args.device)
    if len(names) == 1:
        return _check_one(args)
    from ..ui import console

    worst = 0
    for name in names:  # one after the other: a check measures, two at once would share
        console.print(f"[bold]{name}[/]")  # the host's CPUs where devices are local
        worst = max(worst, _check_one(argparse.Namespace(**{**vars(args), "device": name})))
    return worst


def _check_one(args: argparse.Namespace) -> int:
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
        from ..latency_tables.sentinels import with_recorded_evaluation

        table = with_recorded_evaluation(path, table, home)
        space = table.space.get("name", "?")  # mobilenet_v3 (the default), mobilenet_v2...
        flags = table.flags()
        console.print(f"{path}: {len(table.units)} units ({space} space), {table.describe()}; "
                      f"{table.provenance()} {_age(table.created)} ago; {checked}; "
                      f"{_evaluated_words(table)}"
                      + (f"; [bold red]FLAGGED while measured[/] ({len(flags)}: {flags[0]})"
                         if flags else ""))
    return 0


def _evaluated_words(table) -> str:
    """The table's evaluated error: its last `lut evaluate`, else its cross-validation."""
    model = table.network_model
    if model is None:
        return "format 2: no evaluated error recorded (collect it again)"
    ev = model.evaluation
    if ev:
        m, p = ev["median"], ev.get("p90", {})
        return (f"evaluated {_age(ev['time'])} ago on {ev['count']} networks: median within "
                f"±5 % {m['within_5pct']:.0%}, ±10 % {m['within_10pct']:.0%}; p90 within ±10 %"
                f" {p.get('within_10pct', float('nan')):.0%}")
    return f"not evaluated on the device yet; cross-validation: {model_words(model)}"


def _age(then: float) -> str:
    import time

    seconds = max(0.0, time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"

