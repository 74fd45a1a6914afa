"""Commands that reach a device: ``agent serve``, ``device …``, ``deploy``, ``profile``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import EdgepipeError


def _add_agent(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="the agent that runs on the device").add_subparsers(
        dest="agent_command", required=True)
    p = agent.add_parser("serve", help="serve the agent's HTTP API (needs no torch)")
    p.add_argument("--data", type=Path, default=Path.home() / ".edgepipe" / "agent",
                   help="folder for artifacts, jobs and the token (default ~/.edgepipe/agent)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: reach it through ssh or adb)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks one)")
    p.add_argument("--token", help="the token clients must send (default: $EDGEPIPE_AGENT_TOKEN"
                                   ", else the one saved in --data, else a new one)")
    p.add_argument("--max-upload-mb", type=int, default=1024, help="largest upload accepted")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="cut a client that sends nothing for S seconds (default 30)")
    p.add_argument("--threads", type=int, default=16,
                   help="requests served at once (default 16)")
    p.add_argument("--backlog", type=int, default=128,
                   help="connections queued before they are accepted (default 128)")
    p.add_argument("--tls", action="store_true",
                   help="serve HTTPS with a self-signed certificate made in --data/tls (by "
                        "`openssl`); pin its printed fingerprint with `device add "
                        "--fingerprint`")
    p.add_argument("--et-runner", default="auto", metavar="auto|off|PATH",
                   help="the lean ExecuTorch runner (C++, no torch) ExecuTorch jobs run "
                        "through: auto (find or build one in ~/.cache/edgepipe/bin; default), "
                        "off (the Python bindings), or a runner cross-built for this device")
    p.set_defaults(func=_run_agent_serve)
    p = agent.add_parser("cert", help="make the agent's TLS certificate now (as serve --tls "
                                      "does when it is missing) and print its fingerprint")
    p.add_argument("--data", type=Path, default=Path.home() / ".edgepipe" / "agent",
                   help="the agent's data folder (default ~/.edgepipe/agent)")
    p.set_defaults(func=_run_agent_cert)


def _run_agent_serve(args: argparse.Namespace) -> int:
    from ..device.agent import AgentConfig, load_or_create_token, serve

    token = load_or_create_token(args.data, args.token or os.environ.get("EDGEPIPE_AGENT_TOKEN"))
    config = AgentConfig(data=args.data, token=token, host=args.host, port=args.port,
                         max_upload_mb=args.max_upload_mb, idle_timeout=args.idle_timeout,
                         threads=args.threads, backlog=args.backlog, tls=args.tls,
                         et_runner=args.et_runner)

    def ready(url: str) -> None:
        print(f"edgepipe agent listening on {url} (data {args.data}; token in "
              f"{args.data / 'token'} unless given)", flush=True)
        if args.tls:
            from ..device.tls import certificate_fingerprint

            pin = certificate_fingerprint(args.data / "tls" / "cert.pem")
            print(f"certificate sha256 fingerprint {pin}: pin it with `edgepipe device add "
                  f"NAME --url {url} --token TOKEN --fingerprint {pin}`", flush=True)

    serve(config, ready)
    return 0


def _run_agent_cert(args: argparse.Namespace) -> int:
    from ..device.tls import certificate_fingerprint, ensure_certificate

    cert, _ = ensure_certificate(args.data)
    print(f"fingerprint {certificate_fingerprint(cert)}")
    return 0


def _add_device(sub: argparse._SubParsersAction) -> None:
    device = sub.add_parser("device", help="devices this host measures on").add_subparsers(
        dest="device_command", required=True)
    p = device.add_parser("add", help="register a device: its agent, or (--runner) the "
                                      "runner programs it is measured with, over adb or ssh")
    p.add_argument("name")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the agent's URL, reachable from here")
    where.add_argument("--ssh", metavar="USER@HOST", help="reach the agent through ssh")
    where.add_argument("--adb", metavar="SERIAL", help="reach the agent through adb forward")
    p.add_argument("--token", help="the agent's token (required unless --runner)")
    p.add_argument("--runner", action="append", default=[], type=Path, metavar="PATH",
                   help="no agent on the device: a runner program on this host, pushed "
                        "there and run over --adb or --ssh (LiteRT's benchmark_model, the "
                        "lean ExecuTorch runner from `device build-runner`; repeatable)")
    p.add_argument("--work-dir", help="with --runner: the device's work folder (default "
                                      "/data/local/tmp/edgepipe over adb, /tmp/edgepipe "
                                      "over ssh; removed after each session)")
    p.add_argument("--fingerprint", help="with an https:// --url: the SHA-256 fingerprint "
                                         "`agent serve --tls` printed; any other certificate "
                                         "is refused")
    _ssh_options(p)
    p.set_defaults(func=_run_device_add)
    p = device.add_parser("list", help="list registered devices")
    p.set_defaults(func=_run_device_list)
    p = device.add_parser("remove", help="forget a device")
    p.add_argument("name")
    p.set_defaults(func=_run_device_remove)
    p = device.add_parser("info", help="what the device says about itself: its identity "
                                       "(what a latency table is valid for), clocks, heat")
    p.add_argument("name", help="a registered device, or this-machine")
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p.set_defaults(func=_run_device_info)
    p = device.add_parser("bootstrap", help="install the agent on a Pi over ssh (wheel, venv, "
                                            "systemd user service) and register it")
    p.add_argument("--ssh", metavar="USER@HOST", required=True)
    p.add_argument("--name", help="device name to register (default: the host name)")
    p.add_argument("--token", help="agent token (default: a new random one)")
    p.add_argument("--python", default="python3", help="Python on the device")
    p.add_argument("--remote-dir", default="~/.edgepipe", help="install folder on the device")
    p.add_argument("--tls", action="store_true",
                   help="serve the agent with --tls on all addresses, and register it by "
                        "https://HOST:AGENT_PORT with its certificate's fingerprint pinned "
                        "(default: on loopback, reached through an ssh tunnel)")
    p.add_argument("--executorch", action="store_true",
                   help="also install executorch (this host's version) with --no-deps: no "
                        "torch, its C++ runtime for the lean runner, which the agent builds "
                        "at its start where the device has g++")
    p.add_argument("--et-runner", type=Path, metavar="PATH",
                   help="a lean runner cross-built here (`device build-runner --arch ...`): "
                        "copied to the device and used by the agent (implies --executorch)")
    _ssh_options(p)
    p.set_defaults(func=_run_device_bootstrap)
    p = device.add_parser("build-runner", help="build the lean ExecuTorch runner (C++, no "
                                               "torch) for a device: here, or cross-built")
    p.add_argument("--arch", default=None, help="the device's architecture (default: this "
                                                "machine's), e.g. aarch64")
    p.add_argument("-o", "--out", type=Path, required=True, help="where to write the runner")
    p.set_defaults(func=_run_build_runner)


def _ssh_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent-port", type=int, default=8765,
                   help="the agent's port on the device (ssh/adb; default 8765)")
    p.add_argument("--ssh-port", type=int, help="ssh port on the device")
    p.add_argument("--identity", type=Path, help="ssh private key")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an ssh -o option, e.g. StrictHostKeyChecking=accept-new (repeatable)")


def _ssh_args(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.ssh_port:
        extra += ["-p", str(args.ssh_port)]
    if args.identity:
        extra += ["-i", str(args.identity)]
    for option in args.ssh_option:
        extra += ["-o", option]
    return extra


def _run_device_add(args: argparse.Namespace) -> int:
    from ..host.registry import Device, add_device

    kind, target = next((k, v) for k in ("url", "ssh", "adb") if (v := getattr(args, k)))
    add_device(Device(args.name, kind, target, args.token or "", args.agent_port,
                      _ssh_args(args) if kind == "ssh" else [], fingerprint=args.fingerprint,
                      runners=[str(p) for p in args.runner], work_dir=args.work_dir))
    how = f", no agent: {', '.join(p.name for p in args.runner)}" if args.runner else ""
    print(f"added device {args.name} ({kind} {target}{how})")
    return 0


def _run_device_list(args: argparse.Namespace) -> int:
    from ..host.registry import LOCAL, load_devices

    for d in load_devices().values():
        runners = f"\trunners: {', '.join(Path(r).name for r in d.runners)}" if d.runners \
            else ""
        print(f"{d.name}\t{d.kind}\t{d.target}{runners}")
    print(f"{LOCAL}\tlocal\tan agent started on this machine for each command")
    return 0


def _run_device_remove(args: argparse.Namespace) -> int:
    from ..host.registry import remove_device

    remove_device(args.name)
    print(f"removed device {args.name}")
    return 0


def _run_device_info(args: argparse.Namespace) -> int:
    import json

    from ..device.identity import FIELDS, field_words

    info = device_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    identity = info.get("identity") or {}
    print(f"{args.name}: {info.get('identity_words') or info.get('cpu_model')}")
    print(f"  fingerprint {info.get('fingerprint')} (made of: {', '.join(FIELDS)})")
    for field in FIELDS:
        if field in identity:
            print(f"  {field:>10}: {field_words(identity, field)}")
    freqs = info.get("cpu_frequencies") or []
    cur = [c.get("cur_mhz") for c in freqs]
    clocks = f"{', '.join(str(c) for c in cur)} MHz" if any(cur) else "not exposed"
    print(f"  clocks now: {clocks}; governors: "
          f"{', '.join(info.get('governors') or []) or 'not exposed'}")
    temps = ", ".join(f"{k} {v:.0f} °C" for k, v in (info.get("temperatures_c") or {}).items())
    throttled = info.get("throttled") or "not readable (no vcgencmd)"
    print(f"  temperatures: {temps or 'not exposed'}; throttling: {throttled}")
    runtimes = ", ".join(f"{k} ({v})" for k, v in (info.get("runtimes") or {}).items())
    print(f"  runtimes: {runtimes or 'none'}; host name {info.get('hostname')}")
    return 0


def _run_device_bootstrap(args: argparse.Namespace) -> int:
    from ..host.bootstrap import bootstrap

    bootstrap(args.ssh, _ssh_args(args), name=args.name, token=args.token, python=args.python,
              remote_dir=args.remote_dir, agent_port=args.agent_port, tls=args.tls,
              executorch=args.executorch or args.et_runner is not None,
              et_runner=args.et_runner)
    return 0


def _run_build_runner(args: argparse.Namespace) -> int:
    import platform

    from ..device.native_runner import cache_folder, elf_machine, executorch_version
    from ..host.runner_build import build_for

    arch = args.arch or platform.machine()
    out = build_for(arch, args.out, cache_folder().parent)
    print(f"wrote {out} ({elf_machine(out)}). With an agent on the device: pip install "
          f"--no-deps executorch=={executorch_version()} there, then `edgepipe agent serve "
          f"--et-runner PATH` (or `device bootstrap --et-runner {out}`). Without one: "
          f"`edgepipe device add NAME --adb SERIAL|--ssh USER@HOST --runner {out}` (its "
          "libraries are pushed with it)")
    return 0


def _add_deploy_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="push the artifacts of a convert run to a device")
    p.add_argument("out", type=Path, help="a convert output folder, or one .tflite/.pte")
    p.add_argument("--device", required=True, help="a device added with `edgepipe device add`, "
                                                   "or this-machine")
    p.set_defaults(func=_run_deploy)
    p = sub.add_parser("profile", help="measure an artifact on a device: whole-model latency, "
                                       "memory and a per-operator table")
    p.add_argument("artifact", type=Path, nargs="?", help="a .tflite or .pte with its manifest")
    p.add_argument("--compare", type=Path, nargs="+", metavar="ARTIFACT",
                   help="profile these artifacts (two or more) one after the other and show "
                        "each block's and op type's time side by side, with the ratio to the "
                        "first")
    p.add_argument("--plot", type=Path, default=Path("compare.png"),
                   help="with --compare: where to write the plot (default compare.png)")
    p.add_argument("--device", required=True,
                   help="a device added with `edgepipe device add`, or this-machine (an "
                        "agent started here for the command)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads the runtime uses on the device (default 1)")
    p.add_argument("--warmup", type=int, default=10,
                   help="runs before the timed ones, not counted (default 10)")
    p.add_argument("--min-runs", "--runs", dest="runs", type=int, default=50,
                   help="at least this many timed runs (default 50)")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="... and more runs until they add up to this many seconds (MLPerf "
                        "Mobile's floor is 60; default 0)")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure this many times, each in a job of its own, and say whether "
                        "the medians agree within 5 %% (MLPerf Mobile's rule; default 1)")
    p.add_argument("--reference", action="store_true",
                   help="measure the device's reference sentinels before each repeat (what "
                        "`edgepipe diff` divides out as the device's drift; converted once "
                        "on this host)")
    p.add_argument("--cooldown", type=float, default=0.0, metavar="SECONDS",
                   help="pause between repeats (default 0)")
    p.add_argument("--raw", type=Path, metavar="FILE.json",
                   help="write every run's time (ms) of every repeat to this file")
    p.add_argument("--affinity", help="CPUs to pin to, e.g. 2,3 (Linux)")
    p.add_argument("--no-per-op", action="store_true", help="skip the per-operator profile")
    p.add_argument("--runner", choices=["auto", "native", "python"], default="auto",
                   help="ExecuTorch: the lean C++ runner (native), the Python bindings "
                        "(python), or the runner where the device has one (auto; default)")
    p.add_argument("--top", type=int, default=15, help="rows of the per-op table to print")
    p.add_argument("--out", type=Path, action="append", default=[],
                   help="write the per-op table (.csv or .json; repeatable); with --compare "
                        "the side-by-side table (.csv)")
    p.set_defaults(func=_run_profile)


def cpu_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise EdgepipeError(f"--affinity {text!r} is not a list of CPU numbers, e.g. 0,1") \
            from None


def _run_deploy(args: argparse.Namespace) -> int:
    from ..host.local import LOCAL, device_client
    from ..host.profiling import deploy, deployable
    from ..ui import console

    paths, skipped = deployable(args.out)
    if args.device == LOCAL:
        console.print(f"note: {LOCAL} is an agent started for this command: what is deployed "
                      "to it goes with it (profile, run and evaluate deploy for themselves)")
    with device_client(args.device) as client:
        for meta in deploy(client, paths):
            console.print(f"deployed {meta['name']} ({meta['size'] / 1e6:.2f} MB, "
                          f"sha256 {meta['sha256'][:12]}…) to {args.device}")
    for note in skipped:
        console.print(f"skipped {note}")
    return 0


def _run_profile(args: argparse.Namespace) -> int:
    from ..host.local import device_client
    from ..host.op_table import write_table
    from ..host.profiling import profile
    from ..manifest import write_atomic
    from ..ui import JobProgress, print_profile

    affinity = cpu_list(args.affinity)
    if args.repeat < 1 or args.cooldown < 0 or args.min_seconds < 0:
        raise EdgepipeError("--repeat takes 1 or more, --cooldown and --min-seconds 0 or more")
    if (args.artifact is None) == (args.compare is None):
        raise EdgepipeError("give one artifact to profile, or --compare A B [C ...]")
    if args.compare:
        return _run_compare(args, affinity)
    from ..lab.store import open_store

    store = open_store()  # unreachable or newer: one line before any measurement
    with device_client(args.device) as client, \
            JobProgress(f"{args.artifact.name} on {args.device}") as progress:
        info = client.info()
        before = None
        if args.reference:  # sittings to compare: the device's speed before each
            from ..host.registry import config_home
            from ..lab.reference import Reference

            reference = Reference(client, info, config_home(), args.threads, affinity)
            before = lambda _sitting: reference.measure()  # noqa: E731
        result = profile(client, args.artifact, threads=args.threads, warmup=args.warmup,
                         runs=args.runs, affinity=affinity, per_op=not args.no_per_op,
                         on_progress=progress.update, repeat=args.repeat,
                         cooldown_s=args.cooldown, min_seconds=args.min_seconds,
                         raw=True, runner=args.runner, before_sitting=before)
    print_profile(result, args.top)
    _store_profile(store, args, result, info)
    if args.raw:
        import json

        write_atomic(args.raw, json.dumps(
            {"artifact": result.artifact, "device": result.device, "unit": "ms",
             "repeats": [{"job_id": r["job_id"], "raw_ms": r["latency"].get("raw_ms")}
                         for r in result.repeats or []]}))
        print(f"wrote {args.raw}")
    for path in args.out:
        if not result.per_op:
            raise EdgepipeError(f"no per-op table to write to {path}: {result.per_op_note}")
        write_table(result.per_op, path)
        print(f"wrote {path}")
    return 0


def _store_profile(store, args: argparse.Namespace, result, info: dict) -> None:
    """A profile's result into the results store (``edgepipe history`` lists it)."""
    import time
    from dataclasses import asdict

    from ..lab.store import add_results
    from ..ui import console

    with store:
        entry = {"name": args.device, "info": info,
                 "results": [{**asdict(result), "created": time.time()}]}
        done = add_results(store, "profile", [entry], {args.artifact.name: args.artifact},
                           {"command": "profile", "threads": args.threads, "runs": args.runs,
                            "warmup": args.warmup, "repeat": args.repeat,
                            "affinity": args.affinity, "runner": args.runner})
    console.print(f"stored as result #{done.result_ids[0]} in {store.url}"
                  if done.result_ids else f"already stored in {store.url}")


def _run_compare(args: argparse.Namespace, affinity: list[int] | None) -> int:
    from ..host.compare import compare, plot_comparison, write_comparison
    from ..host.local import device_client
    from ..ui import JobProgress, print_comparison

    if args.no_per_op or args.repeat != 1 or args.raw:
        raise EdgepipeError("--compare measures per-op profiles once each: drop --no-per-op, "
                            "--repeat and --raw")
    if args.plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise EdgepipeError(f"--plot writes .png, .svg or .pdf, not {args.plot.name}")
    for path in args.out:
        if path.suffix != ".csv":
            raise EdgepipeError(f"--out with --compare writes .csv, not {path.name}")
    with device_client(args.device) as client, \
            JobProgress(f"{len(args.compare)} artifacts on {args.device}") as progress:
        comparison = compare(client, args.compare, threads=args.threads, warmup=args.warmup,
                             runs=args.runs, affinity=affinity, on_progress=progress.update)
    print_comparison(comparison)
    plot_comparison(comparison, args.plot)
    print(f"wrote {args.plot}")
    for path in args.out:
        write_comparison(comparison, path)
        print(f"wrote {path}")
    return 0


def device_info(name: str) -> dict:
    from ..host.registry import LOCAL, connect, get_device

    if name == LOCAL:
        from ..device.info import device_info

        return device_info()
    with connect(get_device(name)) as client:
        return client.info()

