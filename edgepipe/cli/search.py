"""Search commands: ``search netadapt``, ``search mnas``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EdgepipeError
from .lut import check_policy_args, table_use, target_args


def _add_search(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="find a network for a device's latency: NetAdapt, "
                                           "MnasNet-style block search").add_subparsers(
        dest="search_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default=None,
                       help="`digits` (built in: scikit-learn's handwritten digits, upscaled; "
                            "the default) or a folder with one sub-folder of images per class; "
                            "netadapt --task distill: `photos` (the photos scikit-image and "
                            "scikit-learn ship; the default) or a folder of photos")
        p.add_argument("--image-size", type=int, default=None,
                       help="the proxy resolution training runs at (default 32; 96 with "
                            "--task distill)")
        p.add_argument("--resolution", type=int, default=224,
                       help="the input resolution latency is predicted and measured at "
                            "(default 224)")
        target = p.add_mutually_exclusive_group()
        target.add_argument("--target-ms", type=float, help="target latency on the device")
        target.add_argument("--target-pct", type=float,
                            help="target as a percentage of the seed network's latency "
                                 "(default: 50 when neither is given)")
        p.add_argument("--workers", type=int, default=2,
                       help="local worker processes training side by side (default 2)")
        p.add_argument("--ray", metavar="ADDRESS",
                       help="train on a Ray cluster instead (`ray start --head` prints it)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--final-steps", type=int, default=600,
                       help="training steps of the final network (default 600)")
        target_args(p)  # the table's device, where the result is measured too
        p.add_argument("--table", type=Path, help="latency table (default: the device's)")
        p.add_argument("--force", action="store_true",
                       help="use a table measured on another device or with other settings")
        check_policy_args(p)
        p.add_argument("--no-verify", action="store_true",
                       help="skip measuring the result on the device")
        p.add_argument("-o", "--out", type=Path, required=True,
                       help="search folder (an interrupted search resumes from it)")

    p = search.add_parser("netadapt", help="shrink a trained network step by step to a "
                                           "target latency (MobileNetV3's layer-wise search)")
    p.add_argument("--model", default="small",
                   help="the seed: small, large (MobileNetV3), mobilenet_v2 or a model.json "
                        "(default small)")
    p.add_argument("--weights",
                   help="the seed's trained weights: a .pth, or `imagenet` for mobilenet_v2 "
                        "(torchvision's, from an installed package; default: train the seed "
                        "first on the data). Weights whose classifier has other classes give "
                        "their features; a new head is trained --pretrain-steps first")
    p.add_argument("--task", choices=["classify", "distill"], default="classify",
                   help="classify: labelled data (--data); distill: the trained seed is the "
                        "teacher, proposals and the final learn its outputs on crops of "
                        "photos and are scored by top-1 agreement and KL divergence on crops "
                        "of other, held-out photos")
    p.add_argument("--finetune-lr", type=float,
                   help="learning rate of each proposal's fine-tune (default 5e-4; 2e-5 with "
                        "--task distill)")
    p.add_argument("--final-lr", type=float,
                   help="learning rate of the final fine-tune (default 1e-3; 5e-5 with "
                        "--task distill)")
    p.add_argument("--crops", default="2048,256,512", metavar="TRAIN,VAL,TEST",
                   help="--task distill: crops of the training, validation and test photos "
                        "(default 2048,256,512)")
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
    from ..search.data import DataSpec, load_dataset

    data = DataSpec(args.data or "digits", args.image_size or 32)
    dataset = load_dataset(data)  # a bad folder is refused before the device is asked
    return _estimator(args), data, dataset


def _estimator(args: argparse.Namespace):
    from ..latency_tables.estimate import Estimator
    from ..ui import console

    use = table_use(args)
    for warning in use.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    console.print(f"latency from {use.words()}")
    return Estimator(use.table, use.factor, use.record())


def _search_target(args: argparse.Namespace, reference_ms: float, default_pct: float) -> float:
    if args.target_ms is not None:
        return args.target_ms
    pct = args.target_pct if args.target_pct is not None else default_pct
    if not 0 < pct <= 100:
        raise EdgepipeError(f"--target-pct {pct} is out of range: give 1 to 100")
    return reference_ms * pct / 100


def _search_finish(args: argparse.Namespace, final: dict, estimator, kind: str) -> int:
    from ..search.results import verify_on_device
    from ..search.state import SearchRecord
    from ..ui import PhaseProgress, console

    predicted = final.get("prediction") or f"{final['predicted_ms']:.3f} ms"
    if final.get("test_kl") is not None:  # a distillation set
        console.print(f"{kind}: top-1 agreement with the teacher {final['accuracy']:.1%} "
                      f"(validation photos), {final['test_accuracy']:.1%} (held-out test "
                      f"photos), KL {final['test_kl']:.3f} nats (test); predicted {predicted}; "
                      f"wrote {final['model']} and {final['weights']}")
    else:
        console.print(f"{kind}: accuracy {final['accuracy']:.1%} (validation), "
                      f"{final['test_accuracy']:.1%} (test), predicted {predicted}; wrote "
                      f"{final['model']} and {final['weights']}")
    if not args.no_verify:
        from ..host.local import open_device
        from ..host.registry import config_home
        from ..models.space import SearchSpace

        workdir = config_home() / "lut-work" / SearchSpace.from_dict(
            estimator.table.space).digest()[:12]
        with open_device(args.device, workdir) as client, PhaseProgress() as progress:
            check = verify_on_device(Path(final["model"]), estimator, client, workdir,
                                     progress)
        record = SearchRecord.reopen(args.out)
        record.data.setdefault("device_checks", []).append(check)
        record.save()
        console.print(f"measured on {args.device}: median {check['measured_ms']:.3f} ms "
                      f"(predicted {check['predicted_ms']:.3f} ms, "
                      f"{check['error_pct']:+.1f} %"
                      + (f", rescaled ×{estimator.factor:.3f}" if estimator.factor != 1 else "")
                      + ")")
    console.print(f"next: edgepipe convert {final['model']} --weights {final['weights']} "
                  "-o <out>, then edgepipe deploy <out> --device <name>")
    return 0


def _crop_counts(text: str) -> tuple[int, int, int]:
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 1:
        raise EdgepipeError(f"--crops {text!r}: give three positive counts, TRAIN,VAL,TEST "
                            "(e.g. 2048,256,512)")
    return counts  # type: ignore[return-value]


def _distillation_spec(args: argparse.Namespace, weights: Path | None):
    """What the distillation set will be, its photos found (bad input refused in one line
    before the device is asked or the teacher runs)."""
    from ..search.distill import PHOTOS, DistillSpec, photo_files

    if weights is None:
        raise EdgepipeError("--task distill needs the teacher's trained weights: give "
                            "--weights (e.g. --model mobilenet_v2 --weights imagenet)")
    if args.data == "digits":
        raise EdgepipeError("--task distill learns from photos: give --data photos (the "
                            "shipped ones) or a folder of photos")
    train, val, test = _crop_counts(args.crops)
    spec = DistillSpec(args.data or PHOTOS, args.image_size or 96, train, val, test)
    photo_files(spec)
    return spec


def _distillation_data(args: argparse.Namespace, spec, seed, weights: Path,
                       labels: list[str] | None):
    """The distillation set of the seed as teacher: made once in the search folder."""
    from ..search.data import DataSpec, load_dataset
    from ..search.distill import seed_distillation
    from ..ui import PhaseProgress, console

    console.print(f"distillation set: {spec.describe()}")
    with PhaseProgress() as progress:
        path = seed_distillation(spec, seed, weights, labels, args.out / "data", progress)
    data = DataSpec(str(path.resolve()), spec.image_size)
    return data, load_dataset(data)


def _run_search_netadapt(args: argparse.Namespace) -> int:
    from ..models.space import SearchSpace
    from ..search.netadapt import (
        DISTILL_FINAL_LR,
        DISTILL_FINETUNE_LR,
        NetAdaptRequest,
        NetAdaptSettings,
        check_shrinkable,
        run_netadapt,
    )
    from ..search.seeds import seed_for_netadapt
    from ..search.workers import open_runner
    from ..ui import PhaseProgress, console

    if args.task == "distill":
        seed, weights, labels = seed_for_netadapt(args.model, args.resolution, None, args.weights)
        spec = _distillation_spec(args, weights)
    else:
        from ..search.data import DataSpec, load_dataset

        data = DataSpec(args.data or "digits", args.image_size or 32)
        ds = load_dataset(data)  # a bad folder is refused before the device is asked
        seed, weights, _ = seed_for_netadapt(args.model, args.resolution, len(ds.classes),
                                         args.weights)
    args.space_family = seed.network.family  # a V2 seed reads a table of V2's space
    estimator = _estimator(args)
    table_family = SearchSpace.from_dict(estimator.table.space).family
    if table_family != seed.network.family:
        names = {"v2": ("MobileNetV2", " --space mobilenet_v2"), "v3": ("MobileNetV3", "")}
        raise EdgepipeError(
            f"the latency table is of {names[table_family][0]}'s space and the seed "
            f"{args.model} is a {names[seed.network.family][0]}: collect a table of its space "
            f"with `edgepipe lut collect{names[seed.network.family][1]}` (or adapt one with "
            "`edgepipe lut adapt`)")
    seed_ms = estimator.predict(seed)
    target = _search_target(args, seed_ms, 50)
    if target >= seed_ms:  # refused before the teacher runs or anything is written
        raise EdgepipeError(f"the target {target:.3f} ms is not below the seed's predicted "
                            f"{seed_ms:.3f} ms: give a lower --target-ms or --target-pct "
                            "below 100")
    check_shrinkable(seed, estimator, args.delta_pct / 100 * seed_ms, args.model)
    if args.task == "distill":  # the teacher runs once the table is known to fit
        data, ds = _distillation_data(args, spec, seed, weights, labels)
    distill = args.task == "distill"
    rates = {"finetune_lr": args.finetune_lr if args.finetune_lr is not None
             else DISTILL_FINETUNE_LR if distill else NetAdaptSettings.finetune_lr,
             "final_lr": args.final_lr if args.final_lr is not None
             else DISTILL_FINAL_LR if distill else NetAdaptSettings.final_lr}
    settings = NetAdaptSettings(delta_pct=args.delta_pct, finetune_steps=args.finetune_steps,
                                final_steps=args.final_steps,
                                pretrain_steps=args.pretrain_steps, seed=args.seed, **rates)
    req = NetAdaptRequest(seed, data, estimator, args.out, target, weights, settings,
                          seed_name=args.model)
    with open_runner(args.workers, args.ray) as runner:
        console.print(f"NetAdapt on {ds.describe()}; target {target:.3f} ms "
                      f"(seed {estimator.predict(seed):.3f} ms) on {estimator.table.describe()}"
                      f"; training on {runner.name}")
        if ds.distillation:
            console.print(f"photos by part: {ds.photos}")
        with PhaseProgress() as progress:
            result = run_netadapt(req, runner, progress)
    steps = result["record"]["steps"]
    console.print(f"{len(steps) - 1} steps: " + "; ".join(s["change"] for s in steps[1:]))
    console.print(f"path plot: {args.out / 'path.png'}")
    return _search_finish(args, result["final"], estimator, "NetAdapt")


def _run_search_mnas(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..models.space import load_space
    from ..search.mnas import MnasRequest, MnasSettings, run_mnas
    from ..search.workers import open_runner
    from ..ui import PhaseProgress, console

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

