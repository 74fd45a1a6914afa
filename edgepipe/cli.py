"""The ``edgepipe`` command: maps sub-commands to the stages' public functions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import EdgepipeError
from .manifest import RANGES

# --range's values; "-1,1" starts with a dash, so main() joins it to its option (argparse
# would read it as an option of its own and say "expected one argument")
INPUT_RANGES = ["imagenet", *RANGES]


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model to ExecuTorch, TFLite and Core ML",
                       description="Convert a model; writes artifacts, manifests and a "
                                   "parity report to OUT.")
    p.add_argument("model", help="a built-in model name (see `edgepipe models`) or "
                                 "module:factory returning a torch.nn.Module")
    p.add_argument("--to", default="executorch,tflite,coreml",
                   help="comma-separated formats (default: all three)")
    p.add_argument("--int8", action="store_true", help="also write int8 artifacts")
    p.add_argument("--weights", help="a state_dict .pth file, or `imagenet` for the packaged "
                                     "MobileNetV2 checkpoint (default: random init)")
    p.add_argument("--calib", type=Path, help="folder of calibration images for int8 "
                                              "(default: built-in real photos)")
    p.add_argument("--size", help="input size: 224, or height x width as 96x128 (default: "
                                  "the model's)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--task", choices=["classification", "segmentation"],
                   help="task of a module:factory model (default classification)")
    p.add_argument("--output", help="for a model returning a dict or tuple: the key or index "
                                    "to convert (default: 'out', else the first)")
    p.add_argument("--range", dest="input_range", choices=INPUT_RANGES,
                   help="the input range the model was trained on (default imagenet: "
                        "ImageNet mean/std)")
    p.add_argument("--threads", type=int, default=1, help="threads for host latency")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .converters.convert import ConvertRequest, convert
    from .models.pretrained import resolve_weights
    from .ui import ProgressBar, console, print_convert_table

    request = ConvertRequest(
        model=args.model, out=args.out,
        formats=[f.strip() for f in args.to.split(",") if f.strip()],
        int8=args.int8, weights=resolve_weights(args.model, args.weights),
        width_mult=args.width, size=args.size, task=args.task, calib_dir=args.calib,
        threads=args.threads, output=args.output, input_range=args.input_range,
    )
    with ProgressBar(f"converting {args.model}") as progress:
        report = convert(request, progress)
    print_convert_table(report)
    console.print(f"wrote {args.out}/ (artifacts, manifests, report.json, report.html)")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from .models import MODEL_NAMES

    for name in MODEL_NAMES:
        print(name)
    return 0


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
    p.set_defaults(func=_run_agent_serve)


def _run_agent_serve(args: argparse.Namespace) -> int:
    from .device.agent import AgentConfig, load_or_create_token, serve

    token = load_or_create_token(args.data, args.token or os.environ.get("EDGEPIPE_AGENT_TOKEN"))
    config = AgentConfig(data=args.data, token=token, host=args.host, port=args.port,
                         max_upload_mb=args.max_upload_mb)

    def ready(url: str) -> None:
        print(f"edgepipe agent listening on {url} (data {args.data}; token in "
              f"{args.data / 'token'} unless given)", flush=True)

    serve(config, ready)
    return 0


def _add_device(sub: argparse._SubParsersAction) -> None:
    device = sub.add_parser("device", help="devices this host measures on").add_subparsers(
        dest="device_command", required=True)
    p = device.add_parser("add", help="register a device's agent")
    p.add_argument("name")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the agent's URL, reachable from here")
    where.add_argument("--ssh", metavar="USER@HOST", help="reach the agent through ssh")
    where.add_argument("--adb", metavar="SERIAL", help="reach the agent through adb forward")
    p.add_argument("--token", required=True, help="the agent's token")
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
    _ssh_options(p)
    p.set_defaults(func=_run_device_bootstrap)


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
    from .host.registry import Device, add_device

    kind, target = next((k, v) for k in ("url", "ssh", "adb") if (v := getattr(args, k)))
    add_device(Device(args.name, kind, target, args.token, args.agent_port,
                      _ssh_args(args) if kind == "ssh" else []))
    print(f"added device {args.name} ({kind} {target})")
    return 0


def _run_device_list(args: argparse.Namespace) -> int:
    from .host.registry import load_devices

    for d in load_devices().values():
        print(f"{d.name}\t{d.kind}\t{d.target}")
    return 0


def _run_device_remove(args: argparse.Namespace) -> int:
    from .host.registry import remove_device

    remove_device(args.name)
    print(f"removed device {args.name}")
    return 0


def _run_device_info(args: argparse.Namespace) -> int:
    import json

    from .device.identity import FIELDS, field_words

    info = _device_info(args.name)
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
    from .host.bootstrap import bootstrap

    bootstrap(args.ssh, _ssh_args(args), name=args.name, token=args.token, python=args.python,
              remote_dir=args.remote_dir, agent_port=args.agent_port)
    return 0


def _add_deploy_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="push the artifacts of a convert run to a device")
    p.add_argument("out", type=Path, help="a convert output folder, or one .tflite/.pte")
    p.add_argument("--device", required=True, help="a device added with `edgepipe device add`")
    p.set_defaults(func=_run_deploy)
    p = sub.add_parser("profile", help="measure an artifact on a device: whole-model latency, "
                                       "memory and a per-operator table")
    p.add_argument("artifact", type=Path, help="a .tflite or .pte with its manifest")
    p.add_argument("--device", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-runs", "--runs", dest="runs", type=int, default=50,
                   help="at least this many timed runs (default 50)")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="... and more runs until they add up to this many seconds (MLPerf "
                        "Mobile's floor is 60; default 0)")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure this many times, each in a job of its own, and say whether "
                        "the medians agree within 5 %% (MLPerf Mobile's rule; default 1)")
    p.add_argument("--cooldown", type=float, default=0.0, metavar="SECONDS",
                   help="pause between repeats (default 0)")
    p.add_argument("--raw", type=Path, metavar="FILE.json",
                   help="write every run's time (ms) of every repeat to this file")
    p.add_argument("--affinity", help="CPUs to pin to, e.g. 2,3 (Linux)")
    p.add_argument("--no-per-op", action="store_true", help="skip the per-operator profile")
    p.add_argument("--top", type=int, default=15, help="rows of the per-op table to print")
    p.add_argument("--out", type=Path, action="append", default=[],
                   help="write the per-op table (.csv or .json; repeatable)")
    p.set_defaults(func=_run_profile)


def _cpu_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise EdgepipeError(f"--affinity {text!r} is not a list of CPU numbers, e.g. 0,1") \
            from None


def _run_deploy(args: argparse.Namespace) -> int:
    from .host.profiling import deploy, deployable
    from .host.registry import connect, get_device
    from .ui import console

    paths, skipped = deployable(args.out)
    with connect(get_device(args.device)) as client:
        for meta in deploy(client, paths):
            console.print(f"deployed {meta['name']} ({meta['size'] / 1e6:.2f} MB, "
                          f"sha256 {meta['sha256'][:12]}…) to {args.device}")
    for note in skipped:
        console.print(f"skipped {note}")
    return 0


def _run_profile(args: argparse.Namespace) -> int:
    from .host.op_table import write_table
    from .host.profiling import profile
    from .host.registry import connect, get_device
    from .manifest import write_atomic
    from .ui import JobProgress, print_profile

    affinity = _cpu_list(args.affinity)
    if args.repeat < 1 or args.cooldown < 0 or args.min_seconds < 0:
        raise EdgepipeError("--repeat takes 1 or more, --cooldown and --min-seconds 0 or more")
    with connect(get_device(args.device)) as client, \
            JobProgress(f"{args.artifact.name} on {args.device}") as progress:
        result = profile(client, args.artifact, threads=args.threads, warmup=args.warmup,
                         runs=args.runs, affinity=affinity, per_op=not args.no_per_op,
                         on_progress=progress.update, repeat=args.repeat,
                         cooldown_s=args.cooldown, min_seconds=args.min_seconds,
                         raw=args.raw is not None)
    print_profile(result, args.top)
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


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    manifest = sub.add_parser("manifest", help="artifact manifests").add_subparsers(
        dest="manifest_command", required=True)
    p = manifest.add_parser("init", help="write a starting manifest for a .tflite/.pte made "
                                         "elsewhere, from its inputs and outputs")
    p.add_argument("file", type=Path)
    p.add_argument("--labels", type=Path, help="a text file of class names, one per line")
    p.add_argument("--force", action="store_true", help="replace an existing manifest")
    p.add_argument("--task", choices=["classification", "segmentation", "unknown"],
                   help="override the guess (unknown: deploy and profile only, no demo)")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], help="override the output layout")
    p.add_argument("--range", dest="input_range", choices=INPUT_RANGES,
                   help="override the input range (imagenet: ImageNet mean/std)")
    p.add_argument("--output-kind", choices=["logits", "probabilities", "mask"],
                   help="override the guess of what the output holds")
    p.add_argument("--images", type=Path, help="a folder of a few real images to check the "
                                               "outputs on (default: scikit-image's photos)")
    p.set_defaults(func=_run_manifest_init)


def _run_manifest_init(args: argparse.Namespace) -> int:
    from .device.inspect_artifact import init_manifest

    path, guesses = init_manifest(args.file, args.labels, args.force, task=args.task,
                                  layout=args.layout, input_range=args.input_range,
                                  output_kind=args.output_kind, images=args.images)
    print(f"wrote {path}; each guess with its confidence and reason (override with --task, "
          "--layout, --range, --output-kind):")
    width = max(len(g.name) for g in guesses)
    for g in guesses:
        print(f"  {g.name:<{width}}  {g.value:<15} {g.confidence:<7}  {g.reason}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole job: convert, deploy, profile on every device, "
                                   "HTML report",
                       description="Convert a model, deploy it to every configured device, "
                                   "profile it there and write OUT/report.html. With no config "
                                   "and no device: MobileNetV3-Small on an agent started on "
                                   "this machine.")
    p.add_argument("config", nargs="?", type=Path, help="a TOML config (see docs/run.toml)")
    p.add_argument("-o", "--out", type=Path, default=Path("out/run"),
                   help="output folder (default out/run)")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from .pipeline.config import load_config
    from .pipeline.run import run_pipeline
    from .ui import ProgressBar, console, print_run_summary

    run = run_pipeline(load_config(args.config), args.out, ProgressBar)
    print_run_summary(run)
    console.print(f"wrote {args.out / 'report.html'} (and run.json, artifacts/)")
    return 0 if all(not d["errors"] for d in run["devices"]) else 1


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a converted model on a camera, video or images, with "
                                    "FPS and per-stage timing on screen",
                       description="Live classification or segmentation. The artifact's "
                                   "manifest chooses the runtime, the preprocessing and how "
                                   "outputs are read.")
    p.add_argument("target", help="a .tflite/.pte with its manifest, a convert output folder "
                                  "(picks the fastest artifact here), or with --runtime torch a "
                                  "built-in model name")
    p.add_argument("--source", required=True,
                   help="picamera2 | a camera index (0) | a video file or stream URL | an image "
                        "folder")
    p.add_argument("--display", default="window",
                   help="window | web | file:OUT.mp4 | none (default window)")
    p.add_argument("--runtime", choices=["litert", "executorch", "torch"],
                   help="torch: PyTorch eager, as a reference (default: the artifact's)")
    p.add_argument("--weights", help="with --runtime torch: the trained weights (.pth or "
                                     "`imagenet`)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--loop", action="store_true", help="start a file or folder again at its end")
    p.add_argument("--realtime", action="store_true",
                   help="play a video file at its own frame rate, like a camera")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-frames", type=int, help="stop after this many captured frames")
    p.add_argument("--host", default="127.0.0.1",
                   help="web display: address to bind (default 127.0.0.1: it streams a camera)")
    p.add_argument("--port", type=int, default=8080, help="web display port (0: any free one)")
    p.add_argument("--token", help="web display: require ?token=TOKEN on every request")
    p.add_argument("--log", type=Path, help="write each frame's prediction as JSON lines")
    p.add_argument("--summary", type=Path, help="write the summary as JSON")
    p.add_argument("--inference-process", choices=["auto", "on", "off"], default="auto",
                   help="run inference in a process of its own (auto: for ExecuTorch, whose "
                        "Python bindings hold the GIL while computing)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import json

    from .apps.demo import run_demo, summary_dict
    from .ui import console, print_demo_summary

    def ready(display: object) -> None:
        console.print(f"demo: showing on {getattr(display, 'name', args.display)}; Ctrl-C stops")

    summary = run_demo(args.target, args.source, args.display, args.runtime, args.threads,
                       args.weights, args.loop, args.realtime, args.duration, args.max_frames,
                       args.host, args.port, args.token, args.log, on_ready=ready,
                       inference_process=args.inference_process)
    print_demo_summary(summary)
    if args.summary:
        from .manifest import write_atomic

        write_atomic(args.summary, json.dumps(summary_dict(summary), indent=1))
    return 0


def _target_args(p: argparse.ArgumentParser) -> None:
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

    target_args = _target_args
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
    _check_policy_args(p)
    p.set_defaults(func=_run_lut_predict)

    p = lut.add_parser("list", help="tables collected here and shipped with edgepipe")
    p.set_defaults(func=_run_lut_list)


def _check_policy_args(p: argparse.ArgumentParser) -> None:
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


def _device_info(name: str) -> dict:
    from .host.local import LOCAL
    from .host.registry import connect, get_device

    if name == LOCAL:
        from .device.info import device_info

        return device_info()
    with connect(get_device(name)) as client:
        return client.info()


def _run_lut_collect(args: argparse.Namespace) -> int:
    from .host.local import open_device
    from .host.registry import config_home
    from .latency_tables.collect import CollectRequest, MeasureSettings, collect
    from .latency_tables.table import Target, table_name
    from .models.space import load_space
    from .ui import PhaseProgress, console

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
    from .host.local import open_device
    from .host.registry import config_home
    from .latency_tables.evaluate import EvaluateRequest, evaluate
    from .latency_tables.table import LatencyTable, Target
    from .models.space import SearchSpace
    from .ui import PhaseProgress, console

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
    from .host.registry import config_home
    from .latency_tables.table import LatencyTable, Target, find_table, known_tables

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


def _table_use(args: argparse.Namespace):
    """The table, checked on the device as --strict/--rescale/--recollect/--no-check say (a
    recent check of the same device reused): a :class:`TableUse`."""
    from contextlib import ExitStack

    from .host.local import open_device
    from .host.registry import config_home
    from .latency_tables.sentinels import (
        apply_policy,
        check_table,
        check_words,
        needs_recollection,
        use_table,
    )
    from .latency_tables.table import Target
    from .models.space import SearchSpace
    from .ui import PhaseProgress, console

    info = _device_info(args.device)
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
    from .host.local import open_device
    from .host.registry import config_home
    from .latency_tables.collect import recollect
    from .models.space import SearchSpace
    from .ui import PhaseProgress, console

    home = config_home()
    workdir = home / "lut-work" / SearchSpace.from_dict(stale.space).digest()[:12]
    with open_device(args.device, workdir) as client, PhaseProgress() as progress:
        fresh = recollect(stale, target, client, home, workdir, use, progress)
    console.print(f"wrote {fresh.path}")
    return fresh


def _run_lut_predict(args: argparse.Namespace) -> int:
    from .latency_tables.estimate import Estimator
    from .models.space import SearchSpace, load_architecture
    from .ui import console

    use = _table_use(args)
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
    from .host.local import open_device
    from .host.registry import config_home
    from .latency_tables.sentinels import check_table, check_words, record_check
    from .models.space import SearchSpace
    from .ui import PhaseProgress, console

    info = _device_info(args.device)
    table, path = _find_table(args, info, own_settings=True)
    home = config_home()
    workdir = home / "lut-work" / SearchSpace.from_dict(table.space).digest()[:12]
    with open_device(args.device, workdir) as client, PhaseProgress() as progress:
        check = check_table(table, client, workdir, args.jobs, progress,
                            affinity=_cpu_list(args.affinity))
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
    from .errors import EdgepipeError
    from .host.registry import config_home
    from .latency_tables.sentinels import recorded_checks
    from .latency_tables.table import LatencyTable, known_tables
    from .ui import console

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


def _add_search(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="find a network for a device's latency: NetAdapt, "
                                           "MnasNet-style block search").add_subparsers(
        dest="search_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default="digits",
                       help="`digits` (built in: scikit-learn's handwritten digits, upscaled) "
                            "or a folder with one sub-folder of images per class")
        p.add_argument("--image-size", type=int, default=32,
                       help="the proxy resolution training runs at (default 32)")
        p.add_argument("--resolution", type=int, default=224,
                       help="the input resolution latency is predicted and measured at")
        target = p.add_mutually_exclusive_group()
        target.add_argument("--target-ms", type=float, help="target latency on the device")
        target.add_argument("--target-pct", type=float,
                            help="target as a percentage of the seed network's latency")
        p.add_argument("--workers", type=int, default=2,
                       help="local worker processes training side by side (default 2)")
        p.add_argument("--ray", metavar="ADDRESS",
                       help="train on a Ray cluster instead (`ray start --head` prints it)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--final-steps", type=int, default=600,
                       help="training steps of the final network (default 600)")
        _target_args(p)  # the table's device, where the result is measured too
        p.add_argument("--table", type=Path, help="latency table (default: the device's)")
        p.add_argument("--force", action="store_true",
                       help="use a table measured on another device or with other settings")
        _check_policy_args(p)
        p.add_argument("--no-verify", action="store_true",
                       help="skip measuring the result on the device")
        p.add_argument("-o", "--out", type=Path, required=True,
                       help="search folder (an interrupted search resumes from it)")

    p = search.add_parser("netadapt", help="shrink a trained network step by step to a "
                                           "target latency (MobileNetV3's layer-wise search)")
    p.add_argument("--model", default="small",
                   help="the seed: small, large (MobileNetV3) or a model.json (default small)")
    p.add_argument("--weights", type=Path,
                   help="the seed's trained weights (default: train it first on the data)")
    p.add_argument("--delta-pct", type=float, default=1.0,
                   help="each step cuts at least this %% of the seed's latency (default 1)")
    p.add_argument("--finetune-steps", type=int, default=20,
                   help="T: training steps of each proposal (default 20)")
    p.add_argument("--pretrain-steps", type=int, default=600,
                   help="training steps of the seed when no --weights (default 600)")
    common(p)
    p.set_defaults(func=_run_search_netadapt)

    p = search.add_parser("mnas", help="sample block configurations from a search space with "
                                       "a learning controller (MnasNet)")
    p.add_argument("--space", default="default", help="default, tiny or a JSON space file")
    p.add_argument("--skeleton", default="small", help="the space's stage layout: small or "
                                                        "large (default small)")
    p.add_argument("--sampler", choices=["rl", "evolution", "random"], default="rl",
                   help="rl: MnasNet's RNN controller (REINFORCE); evolution: regularised "
                        "evolution; random: uniform samples")
    p.add_argument("--samples", type=int, default=32, help="networks trained (default 32)")
    p.add_argument("--per-round", type=int, default=4,
                   help="samples per round, trained side by side (default 4)")
    p.add_argument("--proxy-steps", type=int, default=150,
                   help="training steps of each sample (default 150)")
    p.add_argument("--w", type=float, default=-0.07,
                   help="latency exponent of the reward ACC·(LAT/T)^w (default -0.07; the "
                        "paper used -0.15 for its small model)")
    common(p)
    p.set_defaults(func=_run_search_mnas)


def _search_setup(args: argparse.Namespace):
    from .latency_tables.estimate import Estimator
    from .search.data import DataSpec, load_dataset
    from .ui import console

    data = DataSpec(args.data, args.image_size)
    dataset = load_dataset(data)  # a bad folder is refused before the device is asked
    use = _table_use(args)
    for warning in use.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    console.print(f"latency from {use.words()}")
    return Estimator(use.table, use.factor, use.record()), data, dataset


def _search_target(args: argparse.Namespace, reference_ms: float, default_pct: float) -> float:
    if args.target_ms is not None:
        return args.target_ms
    pct = args.target_pct if args.target_pct is not None else default_pct
    if not 0 < pct <= 100:
        raise EdgepipeError(f"--target-pct {pct} is out of range: give 1 to 100")
    return reference_ms * pct / 100


def _search_finish(args: argparse.Namespace, final: dict, estimator, kind: str) -> int:
    from .search.results import verify_on_device
    from .search.state import SearchRecord
    from .ui import PhaseProgress, console

    console.print(f"{kind}: accuracy {final['accuracy']:.1%} (validation), "
                  f"{final['test_accuracy']:.1%} (test), predicted {final['predicted_ms']:.3f} "
                  f"ms; wrote {final['model']} and {final['weights']}")
    if not args.no_verify:
        from .host.local import open_device
        from .host.registry import config_home
        from .models.space import SearchSpace

        workdir = config_home() / "lut-work" / SearchSpace.from_dict(
            estimator.table.space).digest()[:12]
        with open_device(args.device, workdir) as client, PhaseProgress() as progress:
            check = verify_on_device(Path(final["model"]), estimator, client, workdir,
                                     progress)
        record = SearchRecord.reopen(args.out)
        record.data.setdefault("device_checks", []).append(check)
        record.save()
        console.print(f"measured on {args.device}: {check['measured_ms']:.3f} ms "
                      f"(predicted {check['predicted_ms']:.3f} ms, "
                      f"{check['error_pct']:+.1f} %"
                      + (f", rescaled ×{estimator.factor:.3f}" if estimator.factor != 1 else "")
                      + ")")
    console.print(f"next: edgepipe convert {final['model']} --weights {final['weights']} "
                  "-o <out>, then edgepipe deploy <out> --device <name>")
    return 0


def _run_search_netadapt(args: argparse.Namespace) -> int:
    from .models.space import SearchSpace, load_architecture
    from .search.netadapt import NetAdaptRequest, NetAdaptSettings, run_netadapt
    from .search.workers import open_runner
    from .ui import PhaseProgress, console

    estimator, data, ds = _search_setup(args)
    if args.model in ("small", "large"):
        seed = SearchSpace(num_classes=len(ds.classes)).seed_architecture(
            args.model, args.resolution)
    else:
        seed, _ = load_architecture(args.model)
        if seed.network.num_classes != len(ds.classes):
            raise EdgepipeError(f"{args.model} has {seed.network.num_classes} classes and the "
                                f"data {len(ds.classes)}: give a seed made for this data")
    target = _search_target(args, estimator.predict(seed), 50)
    settings = NetAdaptSettings(delta_pct=args.delta_pct, finetune_steps=args.finetune_steps,
                                final_steps=args.final_steps,
                                pretrain_steps=args.pretrain_steps, seed=args.seed)
    req = NetAdaptRequest(seed, data, estimator, args.out, target, args.weights, settings)
    with open_runner(args.workers, args.ray) as runner:
        console.print(f"NetAdapt on {ds.describe()}; target {target:.3f} ms "
                      f"(seed {estimator.predict(seed):.3f} ms) on {estimator.table.describe()}"
                      f"; training on {runner.name}")
        with PhaseProgress() as progress:
            result = run_netadapt(req, runner, progress)
    steps = result["record"]["steps"]
    console.print(f"{len(steps) - 1} steps: " + "; ".join(s["change"] for s in steps[1:]))
    console.print(f"path plot: {args.out / 'path.png'}")
    return _search_finish(args, result["final"], estimator, "NetAdapt")


def _run_search_mnas(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .models.space import load_space
    from .search.mnas import MnasRequest, MnasSettings, run_mnas
    from .search.workers import open_runner
    from .ui import PhaseProgress, console

    estimator, data, ds = _search_setup(args)
    space = replace(load_space(args.space), num_classes=len(ds.classes))
    if args.resolution not in space.resolutions:
        args.resolution = max(space.resolutions)
        console.print(f"resolution: {args.resolution} (the largest of the space's)")
    reference = estimator.predict(space.seed_architecture(args.skeleton, args.resolution,
                                                          space.width_mults[0])) \
        if args.skeleton in space.seeds else 0.0
    target = _search_target(args, reference, 80)
    settings = MnasSettings(sampler=args.sampler, samples=args.samples,
                            per_round=args.per_round, proxy_steps=args.proxy_steps,
                            final_steps=args.final_steps, w=args.w, seed=args.seed)
    req = MnasRequest(space, args.skeleton, args.resolution, data, estimator, args.out, target,
                      settings)
    with open_runner(args.workers, args.ray) as runner:
        console.print(f"{args.sampler} block search on {ds.describe()}; target {target:.3f} ms"
                      f" on {estimator.table.describe()}; training on {runner.name}")
        with PhaseProgress() as progress:
            result = run_mnas(req, runner, progress)
    samples = result["record"]["samples"]
    best = max(samples, key=lambda h: h["reward"])
    console.print(f"{len(samples)} networks sampled; best reward {best['reward']:.4f} "
                  f"(proxy accuracy {best['accuracy']:.1%}, {best['predicted_ms']:.3f} ms); "
                  f"plot: {args.out / 'samples.png'}")
    return _search_finish(args, result["final"], estimator, "block search")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgepipe",
        description="Take PyTorch vision models to phones and single-board computers, and "
                    "measure them there.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    sub.add_parser("models", help="list built-in models").set_defaults(func=_run_models)
    _add_agent(sub)
    _add_device(sub)
    _add_deploy_profile(sub)
    _add_manifest(sub)
    _add_run(sub)
    _add_demo(sub)
    _add_lut(sub)
    _add_search(sub)
    return parser


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--range -1,1`` as ``--range=-1,1``: a value that starts with a dash."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--range" and arg.startswith("-") and arg in INPUT_RANGES:
            out[-1] = f"--range={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except EdgepipeError as exc:
        print(f"edgepipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgepipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if os.environ.get("EDGEPIPE_DEBUG"):
            raise
        print(f"edgepipe: internal error: {type(exc).__name__}: {exc} (rerun with "
              f"EDGEPIPE_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
