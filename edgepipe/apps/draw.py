"""Drawing on frames (OpenCV): the HUD, top-3 labels, a class mask with its legend."""

from __future__ import annotations

import numpy as np

from ..decode import Classification, Segmentation
from ..manifest import Preprocessing
from ..preprocess import crop_box

FONT_SCALE = 0.5


def pascal_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (class i's RGB colour), background black."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


PALETTE = pascal_palette()
# class index → BGR colour, as cv2.LUT takes it (1 x 256 x 3)
_PALETTE_LUT = np.ascontiguousarray(PALETTE[:, ::-1].reshape(1, 256, 3))


def _text(cv2, img: np.ndarray, text: str, org: tuple[int, int],
          color: tuple[int, int, int] = (255, 255, 255)) -> None:
    """Text on a dark box: readable on any frame."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, 1)
    x, y = org
    cv2.rectangle(img, (x - 2, y - h - 3), (x + w + 2, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, color, 1, cv2.LINE_AA)


def stage_words(stages: dict[str, float | None], unknown: str) -> list[str]:
    """Each stage's mean time as "name 12.3" (ms), ``unknown`` for a stage not timed yet
    (OpenCV's Hershey fonts draw ASCII only: the HUD says "--", the log line "—")."""
    return [f"{k} {unknown if v is None else format(v, '.1f')}" for k, v in stages.items()]


def hud_lines(cv2, width: int, fps: float | None, stages: dict[str, float | None],
              runtime: str) -> list[str]:
    """The HUD's lines for a frame ``width`` pixels wide: the rate ("--" before two frames
    have been inferred: one frame has no rate) and the runtime, then the stages' mean times
    in ms ("--" for a stage not timed yet), wrapped between words so that no line runs off
    a narrow frame (a single word wider than the frame is the only thing cut)."""
    room = width - 16  # the text starts 8 px in, its box 2 px either side

    def fits(text: str) -> bool:
        return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, 1)[0][0] <= room

    def wrapped(line: str, parts: list[str], sep: str, indent: str,
                keep_first: bool) -> list[str]:
        lines = []
        for i, part in enumerate(parts):
            longer = f"{line}{sep if i == 0 else '  '}{part}"
            if fits(longer) or (i == 0 and keep_first):
                line = longer
            else:
                lines.append(line)
                line = f"{indent}{part}"
        return lines + [line]

    rate = f"{'--' if fps is None else format(fps, '5.1f')} FPS"
    times = stage_words(stages, "--")
    return (wrapped(rate, [runtime], "  ", "", keep_first=False)
            + wrapped("ms:", times, " ", "    ", keep_first=True))


def draw_hud(cv2, img: np.ndarray, fps: float | None, stages: dict[str, float | None],
             runtime: str) -> None:
    """The rate and where the time goes, top left, on dark boxes (:func:`hud_lines`)."""
    for i, text in enumerate(hud_lines(cv2, img.shape[1], fps, stages, runtime)):
        _text(cv2, img, text, (8, 20 + 22 * i), (80, 255, 80) if i == 0 else (255, 255, 255))


def draw_classification(cv2, img: np.ndarray, result: Classification) -> None:
    y0 = img.shape[0] - 12 - 22 * (len(result.top) - 1)
    for i, (label, prob) in enumerate(result.top):
        _text(cv2, img, f"{prob:6.1%}  {label}", (8, y0 + 22 * i),
              (255, 255, 0) if i == 0 else (255, 255, 255))


def draw_segmentation(cv2, img: np.ndarray, result: Segmentation, pre: Preprocessing,
                      alpha: float = 0.5, legend: int = 5) -> None:
    """Blend the class colours over the part of the frame the model saw; legend of the
    largest classes.

    The class map is scaled to the frame first (one byte a pixel, nearest neighbour), then
    coloured through a lookup table, blended and copied where it is not background: 0.72 ms
    for a 256x256 mask on a 640x480 frame here; with the decode and the HUD the demo's
    postprocess takes 2.0 ms, where colouring at mask size, a boolean index and numpy's argmax
    took 11.3 ms (``benchmarks/seg_drawing.py``).
    """
    h, w = img.shape[:2]
    left, top, right, bottom = (int(round(v)) for v in crop_box(w, h, pre))
    left, top, right, bottom = max(0, left), max(0, top), min(w, right), min(h, bottom)
    if right <= left or bottom <= top:
        return
    classes = result.classes if result.classes.dtype == np.uint8 else \
        (result.classes % len(PALETTE)).astype(np.uint8)
    scaled = cv2.resize(classes, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST)
    colours = cv2.LUT(cv2.merge((scaled, scaled, scaled)), _PALETTE_LUT)
    region = img[top:bottom, left:right]
    blended = cv2.addWeighted(region, 1 - alpha, colours, alpha, 0)
    cv2.copyTo(blended, scaled, region)  # where the class is not 0 (background)
    cv2.rectangle(img, (left, top), (right - 1, bottom - 1), (200, 200, 200), 1)
    y = h - 12 - 22 * (min(legend, len(result.shares)) - 1)
    for label, share in list(result.shares.items())[:legend]:
        index = result.labels.index(label)
        r, g, b = (int(c) for c in PALETTE[index % len(PALETTE)])
        cv2.rectangle(img, (8, y - 12), (22, y + 2), (b, g, r), -1)
        _text(cv2, img, f"{label} {share:.0%}", (28, y))
        y += 22
