"""Accuracy per format on the device, and int8 repaired by keeping layers in float.

    python benchmarks/accuracy.py [--part digits v2] [--images 300]

digits: a MobileNetV3-Small (10 classes, 64 px) trained here on scikit-learn's digits (the
training part of edgepipe search's split; cached in benchmarks/.cache/accuracy), converted by
`edgepipe convert` to every format, fp32 and int8 (int8 calibrated on 64 validation digits),
and every artifact evaluated by `edgepipe evaluate` on the local agent over the 359 test
digits: top-1 with 95 % intervals. Goal: int8 within 0.5 points of fp32 in both runtimes.

v2: torchvision's trained ImageNet MobileNetV2 (the packaged checkpoint), int8 as `convert`
makes it, with `--keep-float auto`, with `--bias-correction`, and with both, evaluated on N
crops and flips of the photos at hand (scikit-image's and scikit-learn's; seed 1, so not the
calibration crops, which are seed 0 of the same photos) with PyTorch's top-1 as the label: the
flip rate against PyTorch with 95 % intervals, and the latency each variant costs against
plain int8 (the two artifacts of a runtime timed alternately in one process, 3 rounds of 200
runs, 1 thread). Goal: flip rate ≤ 1 %, latency ≤ 1.15× plain int8.

Prints the CPU it ran on; writes benchmarks/.cache/accuracy/results.json and docs/accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).parent / ".cache" / "accuracy"
sys.path.insert(0, str(ROOT))


def mnv3_small_digits() -> torch.nn.Module:
    """MobileNetV3-Small with a 10-class head (the factory `convert` and the reference load)."""
    from edgepipe.models.mobilenet import MobileNet, mobilenet_v3_config

    return MobileNet(mobilenet_v3_config("small", num_classes=10))


def cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "edgepipe.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**__import__("os").environ,
                                                    "PYTHONPATH": str(ROOT)})
    if done.returncode:
        sys.exit(f"edgepipe {' '.join(args[:2])} failed: {done.stderr.strip()[-600:]}")
    return done


def digit_pngs(folder: Path, part: int, count: int | None = None) -> list[tuple[Path, int]]:
    from edgepipe.evaluation.data import digits_part

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, png, label in digits_part(part)[:count]:
        path = folder / f"{i:04d}.png"
        path.write_bytes(png)
        out.append((path, label))
    return out


def train_digits(size: int = 64, steps: int = 600) -> Path:
    weights = CACHE / f"mnv3_small_digits_{size}.pth"
    if weights.is_file():
        return weights
    from edgepipe.images import read_image
    from edgepipe.manifest import Preprocessing
    from edgepipe.preprocess import preprocess

    train = digit_pngs(CACHE / "digits-train", 0)
    pre = Preprocessing(size=[size, size], resize=round(size * 256 / 224))
    x = torch.from_numpy(np.concatenate([preprocess(read_image(p), pre) for p, _ in train]))
    y = torch.tensor([label for _, label in train])
    torch.manual_seed(0)
    model = mnv3_small_digits()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,))
        batch = x[idx] + 0.05 * torch.randn_like(x[idx])  # a little noise: less overfitting
        loss = torch.nn.functional.cross_entropy(model(batch), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0:
            print(f"  training step {step}: loss {loss.item():.3f}", flush=True)
    print(f"  trained in {time.perf_counter() - started:.0f} s")
    torch.save(model.eval().state_dict(), weights)
    return weights


def part_digits() -> dict:
    weights = train_digits()
    out = CACHE / "digits-out"
    if not (out / "report.json").is_file():
        calib = CACHE / "digits-calib"
        digit_pngs(calib, 1, 64)
        cli("convert", "benchmarks.accuracy:mnv3_small_digits", "--weights", str(weights),
            "--size", "64", "--int8", "--calib", str(calib), "--to", "executorch,tflite",
            "-o", str(out))
    cli("evaluate", str(out), "--data", "digits", "--weights", str(weights), "-o",
        str(CACHE / "digits-eval"))
    summary = json.loads((CACHE / "digits-eval" / "evaluation.json").read_text())
    rows = {f"{a['format']} {a['precision']}": a for a in summary["artifacts"]}
    print(f"\ndigits test split ({summary['images']} images), local agent:")
    print(f"  {'artifact':<18} {'top-1 %':>8} {'95 % interval':>16} {'flips vs PyTorch %':>19}")
    for name, a in rows.items():
        t, f = a["top1"], a["flip_rate"]
        print(f"  {name:<18} {100 * t['value']:8.1f} {100 * t['low']:7.1f}–{100 * t['high']:<7.1f}"
              f" {100 * f['value']:10.1f}")
    gaps = {}
    for fmt in ("executorch", "tflite"):
        gap = 100 * (rows[f"{fmt} int8"]["top1"]["value"] - rows[f"{fmt} fp32"]["top1"]["value"])
        gaps[fmt] = gap
        print(f"  {fmt}: int8 − fp32 = {gap:+.1f} points (goal: within 0.5)"
              f" {'met' if abs(gap) <= 0.5 else 'NOT met'}")
    return {"images": summary["images"], "artifacts": rows, "int8_minus_fp32_points": gaps}


def natural_images(count: int) -> Path:
    from PIL import Image

    from edgepipe.converters.images import builtin_calibration_images

    folder = CACHE / f"natural-{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(builtin_calibration_images(count, seed=1)):
        Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=95)
    return folder


def alternate_latency(a: Path, b: Path, rounds: int = 3, runs: int = 200) -> dict:
    """Median ms of two artifacts timed alternately in this process (1 thread)."""
    from edgepipe.device.bench import measure_latency
    from edgepipe.device.runtimes import open_runner
    from edgepipe.manifest import load_manifest

    shape = load_manifest(a).inputs[0].shape
    layout = load_manifest(a).inputs[0].layout
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    runners = {p: open_runner(p, 1) for p in (a, b)}
    medians: dict[Path, list[float]] = {a: [], b: []}
    for _ in range(rounds):
        for p, runner in runners.items():
            medians[p].append(measure_latency(runner, x, 20, runs).median_ms)
    ma, mb = statistics.median(medians[a]), statistics.median(medians[b])
    return {"plain_ms": ma, "keep_float_ms": mb, "ratio": mb / ma}


def part_v2(count: int) -> dict:
    natural = natural_images(count)
    results = {}
    variants = {"plain": [], "keep-float auto": ["--sensitivity", "--keep-float", "auto"],
                "bias correction": ["--bias-correction"],
                "bias correction + keep-float auto": ["--bias-correction", "--sensitivity",
                                                      "--keep-float", "auto"]}
    outs = {name: CACHE / f"v2-{name.replace(' + ', '-').replace(' ', '-')}"
            for name in variants}
    for name, out in outs.items():
        if not (out / "report.json").is_file():
            started = time.perf_counter()
            cli("convert", "mobilenet_v2", "--weights", "imagenet", "--int8", "--to",
                "executorch,tflite", *variants[name], "-o", str(out))
            print(f"  converted {name} in {time.perf_counter() - started:.0f} s")
    choices = {}
    for name in ("keep-float auto", "bias correction + keep-float auto"):
        analysis = json.loads((outs[name] / "report.json").read_text())["int8_analysis"]
        choices[name] = {"float_layers": analysis["float_layers"],
                         **{k: analysis["keep_float"][k] for k in ("int8", "fidelity",
                                                                    "reached", "ceiling")}}
        print(f"\nMobileNetV2 (ImageNet weights), {name}: kept "
              f"{len(analysis['float_layers'])} layer(s) in float: "
              f"{', '.join(analysis['float_layers'])}; on the calibration images all-int8 "
              f"agreement {analysis['keep_float']['int8']['agreement']:.0%} → "
              f"{analysis['keep_float']['fidelity']['agreement']:.0%} (target "
              f"{'reached' if analysis['keep_float']['reached'] else 'NOT reached'})")
    for name, out in outs.items():
        targets = [str(p) for p in sorted(out.glob("*_int8.*")) if p.suffix in (".pte", ".tflite")]
        evaluation = CACHE / f"v2-eval-{out.name.removeprefix('v2-')}"
        cli("evaluate", *targets, "--data", str(natural), "--weights", "imagenet", "-o",
            str(evaluation))
        summary = json.loads((evaluation / "evaluation.json").read_text())
        for a in summary["artifacts"]:
            results[f"{a['format']} int8, {name}"] = a
    print(f"\n{count} natural crops, PyTorch's top-1 as the label, local agent:")
    print(f"  {'artifact':<34} {'flips %':>8} {'95 % interval':>14}   where PyTorch holds")
    for key, a in results.items():
        f, st = a["flip_rate"], a["flip_rate_stable"]
        print(f"  {key:<34} {100 * f['value']:8.1f} {100 * f['low']:7.1f}–{100 * f['high']:.1f}"
              f"   {100 * st['value']:.1f} ({100 * st['low']:.1f}–{100 * st['high']:.1f})")
    floor = next(iter(results.values()))["flip_floor"]
    print(f"  floor: PyTorch itself flips {100 * floor['value']:.1f} % ({100 * floor['low']:.1f}"
          f"–{100 * floor['high']:.1f}) of these images moved by ±1/255")
    latency: dict[str, dict] = {}
    for fmt, suffix in (("executorch", ".pte"), ("tflite", ".tflite")):
        plain = next(outs["plain"].glob(f"*_int8{suffix}"))
        for name, out in outs.items():
            if name == "plain":
                continue
            r = latency.setdefault(name, {})[fmt] = alternate_latency(
                plain, next(out.glob(f"*_int8{suffix}")))
            flips = results[f"{fmt} int8, {name}"]["flip_rate"]["value"]
            print(f"  {fmt}, {name}: plain int8 {r['plain_ms']:.3f} ms, this "
                  f"{r['keep_float_ms']:.3f} ms (×{r['ratio']:.3f}; goal ≤ 1.15 "
                  f"{'met' if r['ratio'] <= 1.15 else 'NOT met'}); flip rate "
                  f"{100 * flips:.1f} % (goal ≤ 1 % {'met' if flips <= 0.01 else 'NOT met'})")
    return {"images": count, "choices": choices,
            "flip_rates": {k: a["flip_rate"] for k, a in results.items()},
            "flip_rates_where_pytorch_holds": {k: a["flip_rate_stable"]
                                               for k, a in results.items()},
            "flip_floor": floor, "latency": latency}


def plot(results: dict, path: Path) -> None:
    from edgepipe.plotting import pyplot, save_figure

    plt = pyplot()
    panels = [k for k in ("digits", "v2") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "digits":
            items = [(n, a["top1"]) for n, a in results["digits"]["artifacts"].items()]
            ax.set_title("MobileNetV3-Small on digits: top-1 on the device")
            ax.set_xlabel("top-1 % (95 % interval)")
        else:
            items = list(results["v2"]["flip_rates"].items())
            ax.set_title("MobileNetV2 int8: flips against PyTorch")
            ax.set_xlabel("top-1 differs from PyTorch's, % of images (95 % interval)")
        names = [n for n, _ in items]
        values = [100 * r["value"] for _, r in items]
        errors = [[100 * (r["value"] - r["low"]) for _, r in items],
                  [100 * (r["high"] - r["value"]) for _, r in items]]
        ax.barh(range(len(items)), values, xerr=errors, color="#4477aa", capsize=3)
        floor = results[key].get("flip_floor") if key == "v2" else None
        if floor:
            ax.axvline(100 * floor["value"], color="#cc6677", linestyle="--",
                       label="PyTorch itself, image ±1/255")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_yticks(range(len(items)), names, fontsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    from edgepipe.device.identity import machine_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["digits", "v2"], choices=["digits", "v2"])
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    print(machine_line())
    CACHE.mkdir(parents=True, exist_ok=True)
    results_path = CACHE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if "digits" in args.part:
        results["digits"] = part_digits()
    if "v2" in args.part:
        results["v2"] = part_v2(args.images)
    results["machine"] = machine_line()
    results_path.write_text(json.dumps(results, indent=1))
    plot(results, ROOT / "docs" / "accuracy.png")
    print(f"wrote {results_path} and docs/accuracy.png")


if __name__ == "__main__":
    main()
