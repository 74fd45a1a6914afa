"""Which artifact to ship on each device, in one line: the fastest whose accuracy stays within
the user's budget, and for every other artifact why it lost.

Accuracy is the disagreement with the PyTorch fp32 model: the flip rate (top-1 differs) of
``[evaluate]``'s data on that device, with its 95 % interval (classification), or the share of
pixels whose class differs (segmentation). Without evaluation data, the conversion's parity
on the built-in photos decides (a handful of images: a flip there is a flip in 25 %), and the
recommendation says it was decided on parity alone.

Speed is each artifact's median latency on the device at its fastest thread count, with the
median's 95 % confidence interval (order statistics of the runs' times; the repeats' medians
widen it where a run was repeated). Two medians whose intervals overlap are not told apart:
the line says so. An fp16 artifact on a CPU without native fp16 arithmetic is never picked
for speed: it runs there in fp32 arithmetic or converts around every kernel, so any speed it
shows is not fp16's.
"""

from __future__ import annotations

from typing import Any

from ..device.bench import median_interval

DEFAULT_MAX_FLIP_RATE = 0.01  # 1 % of images whose top-1 differs from PyTorch fp32


def latency_interval(result: dict[str, Any]) -> tuple[float, float, str]:
    """(low, high, what it is) of a result's median latency, ms."""
    lat = result["latency"]
    interval = lat.get("median_ci95_ms") or (median_interval(lat["raw_ms"])
                                              if lat.get("raw_ms") else None)
    if interval is not None:
        low, high = interval
        what = "95 % CI of the median"
        rep = result.get("replicability")
        if rep and rep.get("medians_ms"):
            low, high = min(low, *rep["medians_ms"]), max(high, *rep["medians_ms"])
            what += f" and the {rep['repeats']} repeats' medians"
        return low, high, what
    if lat.get("p10_ms") is not None and lat.get("p90_ms") is not None:
        return lat["p10_ms"], lat["p90_ms"], "p10–p90 of the runs (no run times kept)"
    median = lat["median_ms"] if lat.get("median_ms") is not None else lat["mean_ms"]
    return median, median, "a single figure (the tool gave no spread)"


def _evaluated(evaluation: dict[str, Any] | None, artifact: str) -> dict[str, Any] | None:
    """The disagreement of ``artifact`` with PyTorch fp32 in an evaluation of the device."""
    if not evaluation or evaluation.get("error"):
        return None
    row = next((a for a in evaluation.get("artifacts") or [] if a["artifact"] == artifact),
               None)
    if row is None or row.get("stopped"):
        return None
    on = f"{evaluation.get('data')}, on the device"
    if row.get("flip_rate"):
        r = row["flip_rate"]
        return {"value": r["value"], "low": r["low"], "high": r["high"], "n": r["n"],
                "measure": "flip rate vs PyTorch fp32", "on": on, "source": "evaluation"}
    if row.get("pixel_agreement") is not None:
        value = 1 - row["pixel_agreement"]
        return {"value": value, "low": None, "high": None, "n": row["images"],
                "measure": "pixels unlike PyTorch fp32", "on": on, "source": "evaluation"}
    return None


def _parity(conversion: dict[str, Any], artifact: str) -> dict[str, Any] | None:
    """The disagreement of ``artifact`` with PyTorch fp32 on the conversion's parity photos."""
    a = next((a for a in conversion["artifacts"] if a["file"] == artifact), None)
    if a is None or not a["parity"].get("executed"):
        return None
    p = a["parity"]
    on = f"the {p['images']} built-in parity photos (at conversion, on the host)"
    if "top1_agreement" in p:
        return {"value": 1 - p["top1_agreement"], "low": None, "high": None,
                "n": p["images"], "measure": "top-1 flips vs PyTorch fp32", "on": on,
                "source": "parity", "max_abs_error": p["max_abs_error"]}
    if "pixel_agreement" in p:
        return {"value": 1 - p["pixel_agreement"], "low": None, "high": None,
                "n": p["images"], "measure": "pixels unlike PyTorch fp32", "on": on,
                "source": "parity", "max_abs_error": p["max_abs_error"]}
    return None


def accuracy_words(acc: dict[str, Any]) -> str:
    interval = (f" ({100 * acc['low']:.1f}–{100 * acc['high']:.1f})"
                if acc.get("low") is not None else "")
    delta = (f", max |Δ| {acc['max_abs_error']:.2g}" if acc.get("max_abs_error") is not None
             else "")
    return f"{acc['measure']} {100 * acc['value']:.1f} %{interval} on {acc['on']}{delta}"


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def _candidates(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Each artifact measured on the device at its fastest thread count."""
    best: dict[str, dict[str, Any]] = {}
    for r in entry.get("results") or []:
        lat = r["latency"]
        median = lat["median_ms"] if lat.get("median_ms") is not None else lat["mean_ms"]
        if median is None:
            continue
        if r["artifact"] not in best or median < best[r["artifact"]]["median_ms"]:
            low, high, what = latency_interval(r)
            best[r["artifact"]] = {
                "artifact": r["artifact"], "format": r["format"], "precision": r["precision"],
                "runtime": r["runtime"], "threads": r["threads"], "median_ms": median,
                "interval_ms": [low, high], "interval": what, "fp16": r.get("fp16"),
                "kernels": (r.get("kernels") or {}).get("words"),
                "flags": r.get("flags") or []}
    return sorted(best.values(), key=lambda c: c["median_ms"])


def recommend_device(entry: dict[str, Any], conversion: dict[str, Any],
                     evaluation: dict[str, Any] | None,
                     max_flip_rate: float = DEFAULT_MAX_FLIP_RATE) -> dict[str, Any]:
    """The recommendation for one device of a run (``entry``: run.json's device entry,
    ``evaluation``: its evaluation entry or None). ``max_flip_rate``: the budget, a fraction
    of images (or pixels) that may disagree with PyTorch fp32. Returns ``{"device", "budget",
    "decided_on", "pick" (None when nothing qualifies), "others": [{..., "why"}], "line"}``."""
    name = entry["name"]
    candidates = _candidates(entry)
    for c in candidates:
        c["accuracy"] = _evaluated(evaluation, c["artifact"]) or _parity(conversion,
                                                                          c["artifact"])
    eligible, others = [], []
    for c in candidates:
        acc = c["accuracy"]
        fp16 = c.get("fp16") or {}
        if c["precision"] == "fp16" and fp16.get("native") is not True:
            c["why"] = (f"fp16 on a CPU with {fp16.get('words') or 'unknown fp16 arithmetic'}"
                        ": never picked for speed (it runs in fp32 arithmetic or converts "
                        "around every kernel there)")
        elif acc is None:
            c["why"] = "no accuracy figure (neither evaluated on the device nor run at parity)"
        elif acc["value"] > max_flip_rate + 1e-12:
            c["why"] = (f"over the accuracy budget: {accuracy_words(acc)} > "
                        f"{100 * max_flip_rate:g} %")
        else:
            eligible.append(c)
            continue
        others.append(c)
    pick = eligible[0] if eligible else None
    for c in eligible[1:]:
        ratio = c["median_ms"] / pick["median_ms"]
        overlap = c["interval_ms"][0] <= pick["interval_ms"][1]
        c["why"] = (f"slower ×{ratio:.2f}: median {_ms(c['median_ms'])} ms "
                    f"({_ms(c['interval_ms'][0])}–{_ms(c['interval_ms'][1])}) vs "
                    f"{_ms(pick['median_ms'])} ms"
                    + ("; the intervals overlap: not told apart on this run" if overlap
                       else ""))
        others.append(c)
    if pick is not None:
        for c in others:
            if "slower" not in c["why"] and c.get("median_ms"):
                c["why"] += f" (median ×{c['median_ms'] / pick['median_ms']:.2f} the pick's)"
    for c in others:
        if c["flags"]:
            c["why"] += f"; its measurement was flagged: {'; '.join(c['flags'])}"
    decided_on = ("evaluation" if pick and pick["accuracy"]["source"] == "evaluation" else
                  "parity alone" if pick else None)
    budget = {"max_flip_rate": max_flip_rate}
    if pick is None:
        line = (f"{name}: no artifact within the {100 * max_flip_rate:g} % accuracy budget "
                f"(of {len(candidates)} measured): raise [recommend] max_flip_rate, or see why "
                "each lost below")
    else:
        acc = pick["accuracy"]
        low, high = pick["interval_ms"]
        line = (f"{name}: ship {pick['artifact']} ({pick['runtime']} {pick['precision']}, "
                f"{pick['threads']} thread{'s' * (pick['threads'] > 1)}): median "
                f"{_ms(pick['median_ms'])} ms ({_ms(low)}–{_ms(high)}, {pick['interval']}); "
                f"{accuracy_words(acc)}, within the {100 * max_flip_rate:g} % budget")
        if decided_on == "parity alone":
            line += ("; decided on parity alone (no [evaluate] data for this device: a few "
                     "photos, not an accuracy figure)")
        if pick["flags"]:
            line += f"; its measurement was flagged: {'; '.join(pick['flags'])}"
    return {"device": name, "budget": budget, "decided_on": decided_on, "pick": pick,
            "others": others, "line": line}


def recommend(run: dict[str, Any], max_flip_rate: float = DEFAULT_MAX_FLIP_RATE
              ) -> list[dict[str, Any]]:
    """One recommendation per device of a run (run.json's ``devices``)."""
    evaluations = {e["name"]: e for e in run.get("evaluations") or []}
    return [recommend_device(entry, run["conversion"], evaluations.get(entry["name"]),
                             max_flip_rate) for entry in run["devices"]]
