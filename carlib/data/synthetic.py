"""Embedded synthetic stand-in for the Kaggle "sf-dl-car-classification" data.

The real competition ships photos (~640x480) of 10 car models as ``train.zip``
(``train/<class>/<name>.jpg``), ``test.zip`` (``test_upload/<name>.jpg``),
``train.csv`` and ``sample-submission.csv``.  This module draws a synthetic
dataset with exactly that layout (plus ``test-answers.csv`` holding the true
test labels) so the toolkit can be exercised offline and in tests.

Design choices:

* The classes differ by *shape only* (silhouette, wheels, windows, roof line,
  overhangs, ride height).  Body colour, window tint, background, lighting,
  scale, position, facing and blur are drawn at random for every image, and
  some backgrounds contain blobs in car-like colours, so colour carries no
  label information.
* Similar pairs exist on purpose (sedan/coupe/limousine/sports,
  hatchback/wagon, van/minibus, suv/pickup) and every class is a distribution
  (proportions are jittered), so a small CNN learns the task but not instantly.
* Everything is a pure function of the arguments: image ``i`` uses
  ``numpy.random.default_rng([seed, i])``; JPEG encoding, zip metadata and
  member order are fixed, so the same arguments give byte-identical files.
* The output folder appears atomically (written to a temporary sibling folder,
  then renamed into place).
"""

from __future__ import annotations

import csv
import filecmp
import math
import operator
import os
import pathlib
import shutil
import tempfile
import zipfile
from statistics import NormalDist
from typing import NamedTuple

import cv2
import numpy as np

from carlib.base.files import new_folder_mode
from carlib.errors import ConfigError, OutputExistsError

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_SEED",
    "DATASET_FILES",
    "generate_car_dataset",
    "render_car_image",
]

DEFAULT_SEED = 0

#: Human-readable class names; the index is the class id (and folder name).
CLASS_NAMES: tuple[str, ...] = (
    "sedan",
    "hatchback",
    "suv",
    "pickup",
    "van",
    "coupe",
    "sports",
    "minibus",
    "wagon",
    "limousine",
)

#: Files written into the output folder (the first four are Kaggle's layout).
DATASET_FILES: tuple[str, ...] = (
    "train.zip",
    "test.zip",
    "train.csv",
    "sample-submission.csv",
    "test-answers.csv",
)

# --------------------------------------------------------------------------
# Tunable difficulty knobs.  Raising the shape jitters makes similar classes
# overlap more (harder); the nuisance knobs make images noisier without
# touching the class signal.
# --------------------------------------------------------------------------

#: Relative jitter of a vehicle's overall height (roof, belt, nose, deck, tail
#: and clearance scale together by ``1 + U(-j, j)``).
HEIGHT_JITTER = 0.05
#: Extra independent relative jitter of each vertical profile measure.
PART_HEIGHT_JITTER = 0.04
#: Additive jitter (in car lengths) of horizontal positions: hood end, roof
#: start/end, rear glass base and axles.
POSITION_JITTER = 0.03
#: Relative jitter of the wheel radius.
WHEEL_JITTER = 0.10
#: Car length as a fraction of image width, drawn uniformly from this range.
CAR_WIDTH_FRACTION = (0.6, 0.95)
#: Image height as a fraction of image width, drawn uniformly (about 4:3).
ASPECT_RANGE = (0.60, 0.85)
#: Probability of tilting the car, and the largest tilt in degrees.
TILT_PROB = 0.25
MAX_TILT_DEG = 6.0
#: Probability that a foreground object (pole, bush, sign) covers part of the
#: car, and the largest occluder width as a fraction of the car length.
OCCLUSION_PROB = 0.1
OCCLUSION_MAX_FRACTION = 0.25
#: Inclusive range of the number of random rectangles, ellipses and lines
#: scattered over the background (doubled for "clutter" scenes).
CLUTTER_SHAPES = (0, 3)
#: Probability of blurring the background before the car is drawn (shallow
#: depth of field), and the largest blur sigma in pixels at 320 px width.
BACKGROUND_BLUR_PROB = 0.6
BACKGROUND_BLUR_MAX_SIGMA = 3.0
#: Background contrast factor range (1 keeps it, 0.5 halves it towards its mean).
BACKGROUND_CONTRAST = (0.5, 1.0)
#: Probability that the background contains blobs coloured like car bodies.
DECOY_BLOB_PROB = 0.4
#: Global brightness multiplier range (lighting).
BRIGHTNESS_RANGE = (0.55, 1.3)
#: Largest standard deviation of the additive pixel noise (0..255 scale).
NOISE_SIGMA_MAX = 8.0
#: Probability of a Gaussian blur, and the largest blur sigma in pixels
#: (scaled with image width relative to 320 px).
BLUR_PROB = 0.35
MAX_BLUR_SIGMA = 1.6
#: JPEG quality, drawn uniformly from this inclusive range.
JPEG_QUALITY_RANGE = (60, 95)

# Limits for argument validation.
_MAX_CLASSES = len(CLASS_NAMES)
_MIN_IMAGE_WIDTH = 16
_MAX_IMAGE_WIDTH = 4096

# Fixed metadata so the zip files are byte-identical across runs and machines.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# Stream id for the layout RNG; three words so it can never equal an image
# stream ``[seed, index]`` (SeedSequence pads short entropy with zeros).
_LAYOUT_STREAM = (0, 0x5EED)

# Standard-normal quantiles at (k + 0.5) / 256, read-only (no mutable state).
_GAUSS_QUANTILES = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)
_GAUSS_QUANTILES.flags.writeable = False

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


class _Profile(NamedTuple):
    """Side-view template of one vehicle class, in units of car length.

    x runs from the front bumper (0) to the rear bumper (1); y is the height
    above the ground.  The silhouette is the polygon
    (0,clear) (0,nose) (hood_end,belt) (roof_start,roof) (roof_end,roof)
    (rear_base,deck) (1,tail) (1,clear), with corners rounded by ``rounding``.
    """

    roof: float  # roof height
    clear: float  # ground clearance (bottom of body)
    wheel: float  # wheel radius
    axles: tuple[float, ...]  # axle x positions
    nose: float  # height of the front end
    belt: float  # belt line (window bottom) at the windscreen base
    hood_end: float  # x of the windscreen base
    roof_start: float  # x of the windscreen top
    roof_end: float  # x where the roof ends
    rear_base: float  # x of the rear glass base
    deck: float  # height of the rear glass base / boot lid / bed rail
    tail: float  # height of the rear end
    windows: tuple[int, int]  # inclusive range of side-window count
    cover: tuple[float, float]  # fraction of the glasshouse that is glazed
    rounding: float  # Chaikin corner-cutting ratio (0 boxy .. 0.3 smooth)
    bed: bool = False  # open cargo bed behind the cab (pickup)


# Indexed like CLASS_NAMES.  Numbers follow real proportions (e.g. sedan
# 4.8 m x 1.45 m -> roof 0.30), slightly caricatured so classes are learnable.
_PROFILES: tuple[_Profile, ...] = (
    # sedan: three boxes, medium height, two or three side windows
    _Profile(0.300, 0.035, 0.070, (0.18, 0.78), 0.13, 0.170, 0.30, 0.42, 0.66, 0.80,
             0.175, 0.165, (2, 3), (1.0, 1.0), 0.22),
    # hatchback: short and tall, two boxes, steep rear hatch, short overhangs
    _Profile(0.370, 0.040, 0.080, (0.15, 0.84), 0.15, 0.200, 0.24, 0.40, 0.86, 0.97,
             0.220, 0.180, (1, 2), (1.0, 1.0), 0.25),
    # suv: tall, high ground clearance, big wheels, long boxy roof
    _Profile(0.385, 0.065, 0.092, (0.17, 0.80), 0.19, 0.235, 0.27, 0.38, 0.90, 0.96,
             0.250, 0.220, (2, 3), (1.0, 1.0), 0.14),
    # pickup: tall cab in front, low open bed behind, high clearance
    _Profile(0.360, 0.065, 0.088, (0.17, 0.76), 0.19, 0.230, 0.25, 0.34, 0.52, 0.54,
             0.230, 0.230, (1, 2), (1.0, 1.0), 0.10, bed=True),
    # van: very tall box with a short hood, windows only around the cab
    _Profile(0.430, 0.045, 0.070, (0.15, 0.75), 0.17, 0.220, 0.14, 0.25, 0.97, 0.99,
             0.230, 0.220, (1, 2), (0.22, 0.45), 0.12),
    # coupe: low, long fastback rear glass, one long side window
    _Profile(0.270, 0.030, 0.072, (0.19, 0.79), 0.12, 0.160, 0.33, 0.46, 0.60, 0.86,
             0.160, 0.155, (1, 2), (1.0, 1.0), 0.25),
    # sports: lowest, wedge nose, long hood, cabin set back, big wheels
    _Profile(0.235, 0.018, 0.076, (0.19, 0.80), 0.075, 0.140, 0.42, 0.55, 0.66, 0.88,
             0.150, 0.150, (1, 1), (1.0, 1.0), 0.30),
    # minibus: tall one-box without a hood, a row of many windows
    _Profile(0.420, 0.035, 0.058, (0.13, 0.70), 0.13, 0.200, 0.05, 0.12, 0.97, 0.995,
             0.200, 0.190, (4, 6), (0.85, 1.0), 0.15),
    # wagon: sedan-like nose but the roof runs to the rear, three windows
    _Profile(0.310, 0.035, 0.068, (0.18, 0.79), 0.13, 0.175, 0.29, 0.41, 0.92, 0.98,
             0.190, 0.160, (3, 3), (1.0, 1.0), 0.20),
    # limousine: very long and low, small wheels, long glasshouse
    _Profile(0.215, 0.022, 0.050, (0.13, 0.86), 0.09, 0.125, 0.21, 0.28, 0.78, 0.87,
             0.125, 0.120, (3, 5), (1.0, 1.0), 0.20),
)


class _CarShape(NamedTuple):
    """One jittered car, ready to draw (model coordinates, car length 1)."""

    body: np.ndarray  # Nx2 silhouette polygon
    windows: list[np.ndarray]  # side window polygons
    pillars: list[float]  # x of door seams
    wheels: list[tuple[float, float, float]]  # (x, y, radius)
    roof: float
    belt: float
    clear: float
    bed: tuple[float, float, float] | None  # (x_start, x_end, height) of bed rail


# --------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------


def _chaikin(poly: np.ndarray, ratio: float, iterations: int = 2) -> np.ndarray:
    """Round the corners of a closed polygon by Chaikin corner cutting."""
    if ratio <= 0:
        return poly
    for _ in range(iterations):
        nxt = np.roll(poly, -1, axis=0)
        q = poly + ratio * (nxt - poly)
        r = poly + (1.0 - ratio) * (nxt - poly)
        poly = np.stack([q, r], axis=1).reshape(-1, 2)
    return poly


def _inset(poly: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move every edge of a convex polygon inwards by its offset."""
    n = len(poly)
    area2 = np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    sign = 1.0 if area2 > 0 else -1.0  # CCW: inward normal is the left normal
    pts, dirs = [], []
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        d = b - a
        d = d / (np.hypot(*d) + 1e-12)
        normal = sign * np.array([-d[1], d[0]])
        pts.append(a + normal * offsets[i])
        dirs.append(d)
    out = []
    for i in range(n):
        # intersection of edge i-1 and edge i
        p1, d1 = pts[i - 1], dirs[i - 1]
        p2, d2 = pts[i], dirs[i]
        den = d1[0] * d2[1] - d1[1] * d2[0]
        if abs(den) < 1e-9:
            out.append(p2)
            continue
        t = ((p2[0] - p1[0]) * d2[1] - (p2[1] - p1[1]) * d2[0]) / den
        out.append(p1 + t * d1)
    return np.array(out)


def _clip_x(poly: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip a polygon to the vertical strip lo <= x <= hi (Sutherland-Hodgman)."""

    def clip(points, inside, cross):
        res = []
        for i in range(len(points)):
            cur, prev = points[i], points[i - 1]
            if inside(cur):
                if not inside(prev):
                    res.append(cross(prev, cur))
                res.append(cur)
            elif inside(prev):
                res.append(cross(prev, cur))
        return res

    def crosser(x0):
        def cross(p, q):
            t = (x0 - p[0]) / (q[0] - p[0])
            return p + t * (q - p)

        return cross

    pts = list(poly)
    pts = clip(pts, lambda p: p[0] >= lo, crosser(lo))
    if pts:
        pts = clip(pts, lambda p: p[0] <= hi, crosser(hi))
    return np.array(pts) if len(pts) >= 3 else np.zeros((0, 2))


# --------------------------------------------------------------------------
# Car shape
# --------------------------------------------------------------------------


def _jittered_shape(class_id: int, rng: np.random.Generator) -> _CarShape:
    """Draw one car of ``class_id`` with jittered proportions."""
    p = _PROFILES[class_id]
    u = lambda j: rng.uniform(-j, j)  # noqa: E731 - tiny local helper

    v = 1.0 + u(HEIGHT_JITTER)
    h = lambda value: value * v * (1.0 + u(PART_HEIGHT_JITTER))  # noqa: E731
    roof, clear, nose = h(p.roof), h(p.clear), h(p.nose)
    belt, deck, tail = h(p.belt), h(p.deck), h(p.tail)
    wheel = p.wheel * (1.0 + u(WHEEL_JITTER))

    x = lambda value: value + u(POSITION_JITTER)  # noqa: E731
    a1, a2, a3, a4 = x(p.hood_end), x(p.roof_start), x(p.roof_end), x(p.rear_base)
    # Keep the outline valid: ordered x positions, glasshouse above the belt.
    a1 = float(np.clip(a1, 0.02, 0.6))
    a2 = max(a2, a1 + 0.04)
    a3 = max(a3, a2 + 0.06)
    a4 = float(np.clip(max(a4, a3 + 0.015), 0.0, 0.998))
    a3 = min(a3, a4 - 0.01)
    belt = min(belt, roof - 0.06)
    deck = min(deck, roof - 0.04)
    nose = min(nose, belt)
    clear = min(clear, 0.6 * nose)
    tail = min(max(tail, clear + 0.05), deck + 0.02)

    body = np.array(
        [(0.0, clear), (0.0, nose), (a1, belt), (a2, roof), (a3, roof),
         (a4, deck), (1.0, tail), (1.0, clear)]
    )
    body = _chaikin(body, p.rounding * (1.0 + u(0.3)))

    # Side glass: the glasshouse quad inset by the pillar/roof thickness.
    house = np.array([(a1, belt), (a2, roof), (a3, roof), (a4, deck)])
    g = 0.014 * (1.0 + u(0.3))
    glass = _inset(house, np.array([g * 1.3, g, g * 1.3, g * 0.4]))
    xs = glass[:, 0]
    lo, hi = xs.min(), xs.max()
    hi = lo + (hi - lo) * rng.uniform(*p.cover)
    n_win = int(rng.integers(p.windows[0], p.windows[1] + 1))
    cuts = np.linspace(lo, hi, n_win + 1)
    if n_win > 1:  # uneven door lengths within a class
        step = (hi - lo) / n_win
        cuts[1:-1] += rng.uniform(-0.15, 0.15, n_win - 1) * step
    pillar = 0.012 * (1.0 + u(0.3))
    windows = []
    for i in range(n_win):
        w = _clip_x(glass, cuts[i] + (pillar / 2 if i else 0), cuts[i + 1] - (pillar / 2 if i < n_win - 1 else 0))
        if len(w):
            windows.append(_chaikin(w, 0.12, 1))
    pillars = [float(c) for c in cuts[1:-1]]
    if p.bed:
        pillars.append(a4)

    wheels = []
    for ax in p.axles:
        cx = float(np.clip(x(ax), wheel + 0.02, 1.0 - wheel - 0.02))
        wheels.append((cx, wheel, wheel))
    bed = (a4 + 0.01, 0.99, deck - 0.02) if p.bed else None
    return _CarShape(body, windows, pillars, wheels, roof, belt, clear, bed)


# --------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------


def _fix(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> cv2 fixed-point int32 array."""
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


def _poly(img: np.ndarray, points: np.ndarray, color) -> None:
    cv2.fillPoly(img, [_fix(points)], _c(color), cv2.LINE_AA, _SHIFT)


def _circle(img: np.ndarray, center, radius: float, color) -> None:
    c = _fix(center)
    cv2.circle(img, (int(c[0]), int(c[1])), max(1, int(round(radius * _ONE))), _c(color), -1,
               cv2.LINE_AA, _SHIFT)


def _ellipse(img, center, axes, angle, color, start=0.0, end=360.0, thickness=-1) -> None:
    c = _fix(center)
    a = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(img, (int(c[0]), int(c[1])), a, float(angle), float(start), float(end), _c(color),
                thickness, cv2.LINE_AA, _SHIFT)


def _line(img, p, q, color, thickness: int = 1) -> None:
    a, b = _fix(p), _fix(q)
    cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), _c(color), max(1, int(thickness)),
             cv2.LINE_AA, _SHIFT)


def _c(color) -> tuple[float, ...]:
    return tuple(min(255.0, max(0.0, float(v))) for v in color)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """h in [0, 360), s and v in [0, 1] -> RGB in 0..255."""
    hsv = np.array([[[h / 2.0, s * 255.0, v * 255.0]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _car_colour(rng: np.random.Generator) -> np.ndarray:
    """A car paint colour: any hue, or grey/black/white (never class-bound)."""
    if rng.random() < 0.35:  # achromatic paints are common on real roads
        return np.full(3, rng.uniform(15, 245)) + rng.uniform(-6, 6, 3)
    return _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.35, 1.0), rng.uniform(0.25, 1.0))


def _random_colour(rng: np.random.Generator, sat=(0.0, 0.6), val=(0.2, 0.95)) -> np.ndarray:
    return _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(*sat), rng.uniform(*val))


# --------------------------------------------------------------------------
# Background
# --------------------------------------------------------------------------


def _vertical_gradient(img: np.ndarray, y0: int, y1: int, top, bottom) -> None:
    if y1 <= y0:
        return
    t = np.linspace(0.0, 1.0, y1 - y0)[:, None]
    rows = (1 - t) * np.asarray(top)[None, :] + t * np.asarray(bottom)[None, :]
    column = np.clip(rows, 0, 255).astype(np.uint8)[:, None, :]
    # cv2.resize broadcasts the column ~5x faster than a numpy broadcast copy
    img[y0:y1] = cv2.resize(column, (img.shape[1], y1 - y0), interpolation=cv2.INTER_NEAREST)


def _draw_background(img: np.ndarray, rng: np.random.Generator) -> int:
    """Paint a cluttered scene; return the horizon row."""
    h, w = img.shape[:2]
    scene = int(rng.integers(4))  # 0 street, 1 nature, 2 studio, 3 clutter
    horizon = int(h * rng.uniform(0.25, 0.6))

    if scene == 2:  # studio: plain wall and floor
        wall = _random_colour(rng, (0, 0.4), (0.3, 0.95))
        _vertical_gradient(img, 0, horizon, wall * rng.uniform(0.8, 1.1), wall)
    else:  # sky: blue, grey, or sunset-like
        sky_top = _random_colour(rng, (0.0, 0.7), (0.4, 1.0))
        _vertical_gradient(img, 0, horizon, sky_top, _random_colour(rng, (0.0, 0.4), (0.5, 1.0)))
    ground = _random_colour(rng, (0.0, 0.45), (0.15, 0.7))
    _vertical_gradient(img, horizon, h, ground * rng.uniform(0.7, 1.0), ground * rng.uniform(0.9, 1.3))

    if scene == 0:  # street: buildings along the horizon with window grids
        x = -rng.uniform(0, 0.2) * w
        while x < w:
            bw = w * rng.uniform(0.1, 0.35)
            top = horizon - h * rng.uniform(0.1, 0.55)
            col = _random_colour(rng, (0, 0.5), (0.2, 0.9))
            _poly(img, np.array([(x, top), (x + bw, top), (x + bw, horizon), (x, horizon)]), col)
            if rng.random() < 0.7:
                win = col * rng.uniform(0.3, 1.6)
                step = max(4.0, bw / rng.uniform(3, 7))
                wx = np.arange(x + step * 0.3, x + bw - step * 0.5, step)
                wy = np.arange(top + step * 0.3, horizon - step * 0.5, step)
                if wx.size and wy.size:  # all windows in one fillPoly call (speed)
                    gx, gy = (a.ravel() for a in np.meshgrid(wx, wy))
                    d = step * 0.5
                    quads = np.stack([np.stack([gx, gy], 1), np.stack([gx + d, gy], 1),
                                      np.stack([gx + d, gy + d], 1), np.stack([gx, gy + d], 1)], 1)
                    cv2.fillPoly(img, list(_fix(quads)), _c(win), cv2.LINE_AA, _SHIFT)
            x += bw + w * rng.uniform(0, 0.05)
    elif scene == 1:  # nature: hills and trees
        if rng.random() < 0.6:
            xs = np.linspace(-0.05 * w, 1.05 * w, 7)
            ys = horizon - h * rng.uniform(0.02, 0.2, xs.size)
            hill = np.concatenate([np.stack([xs, ys], 1), [(1.05 * w, horizon), (-0.05 * w, horizon)]])
            _poly(img, hill, _random_colour(rng, (0.2, 0.6), (0.2, 0.6)))
        for _ in range(int(rng.integers(2, 9))):
            tx = rng.uniform(0, w)
            th = h * rng.uniform(0.1, 0.4)
            _poly(img, np.array([(tx - 2, horizon - th * 0.5), (tx + 2, horizon - th * 0.5),
                                 (tx + 2, horizon + 2), (tx - 2, horizon + 2)]), (70, 50, 30))
            leaf = _hsv_to_rgb(rng.uniform(40, 150), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7))
            _ellipse(img, (tx, horizon - th * 0.7), (th * rng.uniform(0.25, 0.5), th * 0.45), 0, leaf)

    # clutter for every scene: random rectangles, ellipses and lines
    n_shapes = int(rng.integers(CLUTTER_SHAPES[0], CLUTTER_SHAPES[1] + 1)) * (2 if scene == 3 else 1)
    for _ in range(n_shapes):
        col = _random_colour(rng, (0, 0.6), (0.1, 1.0))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = w * rng.uniform(0.02, 0.2), h * rng.uniform(0.02, 0.2)
        kind = rng.integers(3)
        if kind == 0:
            _poly(img, np.array([(cx - sx, cy - sy), (cx + sx, cy - sy), (cx + sx, cy + sy), (cx - sx, cy + sy)]), col)
        elif kind == 1:
            _ellipse(img, (cx, cy), (sx, sy), rng.uniform(0, 180), col)
        else:
            _line(img, (cx - sx * 2, cy - sy), (cx + sx * 2, cy + sy), col, int(rng.integers(1, 4)))
    # road markings
    if scene in (0, 3) or rng.random() < 0.3:
        y = rng.uniform(horizon + 0.3 * (h - horizon), h)
        dash = w * rng.uniform(0.05, 0.15)
        col = (235, 235, 225) if rng.random() < 0.7 else (230, 200, 40)
        for x0 in np.arange(-rng.uniform(0, dash), w, dash * 2):
            _line(img, (x0, y), (x0 + dash, y), col, max(1, int(h * 0.01)))
    # decoys: blobs painted like car bodies, so colour cannot identify the car
    if rng.random() < DECOY_BLOB_PROB:
        for _ in range(int(rng.integers(1, 3))):
            col = _car_colour(rng)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            sx, sy = w * rng.uniform(0.04, 0.2), h * rng.uniform(0.03, 0.15)
            if rng.random() < 0.5:
                _ellipse(img, (cx, cy), (sx, sy), rng.uniform(-20, 20), col)
            else:
                rect = np.array([(cx - sx, cy - sy), (cx + sx, cy - sy), (cx + sx, cy + sy), (cx - sx, cy + sy)])
                _poly(img, _chaikin(rect, 0.2), col)
    return horizon


# --------------------------------------------------------------------------
# Car drawing
# --------------------------------------------------------------------------


def _box(h: int, w: int, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
    """Row and column slices of a pixel box, clipped to an h x w image."""
    return (slice(max(0, int(y0)), min(h, int(math.ceil(y1)) + 1)),
            slice(max(0, int(x0)), min(w, int(math.ceil(x1)) + 1)))


def _draw_car(
    img: np.ndarray, shape: _CarShape, rng: np.random.Generator, horizon: int
) -> tuple[float, float, float, float]:
    """Draw ``shape`` at a random pose; return its pixel box (x0, y_top, length, y_ground)."""
    h, w = img.shape[:2]
    s = w * rng.uniform(*CAR_WIDTH_FRACTION)  # car length in pixels
    car_h = s * shape.roof
    x0 = rng.uniform(-0.03 * s, max(-0.03 * s, w - 0.97 * s))
    lo = max(horizon + 0.05 * h, car_h + 0.02 * h)
    hi = h * 0.99
    yg = rng.uniform(lo, hi) if lo < hi else hi
    mirror = rng.random() < 0.5  # facing left or right
    tilt = rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG) if rng.random() < TILT_PROB else 0.0

    # model (x right from the front, y up) -> pixels, then rotate about the centre
    sx = -s if mirror else s
    base = np.array([[sx, 0.0, x0 + (s if mirror else 0.0)], [0.0, -s, yg]])
    rot = cv2.getRotationMatrix2D((x0 + s / 2, yg - car_h / 2), tilt, 1.0)
    affine = rot[:, :2] @ base
    affine[:, 2] += rot[:, 2]
    tf = lambda pts: np.asarray(pts, float) @ affine[:, :2].T + affine[:, 2]  # noqa: E731
    ang = -tilt  # cv2.ellipse angles turn the other way than getRotationMatrix2D

    # soft shadow on the ground (worked on its bounding box only, for speed)
    centre = tf([(0.5, 0.0)])[0]
    blur = max(1.0, 0.02 * s)
    ys, xs = _box(h, w, centre[0] - 0.6 * s - 3 * blur, centre[1] - 0.1 * s - 3 * blur,
                  centre[0] + 0.6 * s + 3 * blur, centre[1] + 0.1 * s + 3 * blur)
    if ys.stop > ys.start and xs.stop > xs.start:
        shadow = np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.uint8)
        _ellipse(shadow, centre - (xs.start, ys.start), (0.55 * s, 0.035 * s + 1), ang, (255, 255, 255))
        shadow = cv2.GaussianBlur(shadow, (0, 0), blur).astype(np.float32) / 255.0
        roi = img[ys, xs]
        roi[:] = (roi * (1.0 - rng.uniform(0.3, 0.7) * shadow[..., None])).astype(np.uint8)

    # body, shaded top-to-bottom so it looks like a curved panel
    body_px = tf(shape.body)
    paint = _car_colour(rng)
    (bx0, by0), (bx1, by1) = body_px.min(0), body_px.max(0)
    ys, xs = _box(h, w, bx0 - 2, by0 - 2, bx1 + 2, by1 + 2)
    if ys.stop > ys.start and xs.stop > xs.start:
        mask = np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.uint8)
        _poly(mask, body_px - (xs.start, ys.start), (255, 255, 255))
        t = (np.arange(ys.start, ys.stop, dtype=np.float32) - by0) / max(1.0, by1 - by0)
        t_belt = (shape.roof - shape.belt) / max(1e-6, shape.roof - shape.clear)
        shade = (1.0 + rng.uniform(0.15, 0.45) * (0.4 - t)
                 + rng.uniform(0.1, 0.35) * np.exp(-((t - t_belt) / 0.07) ** 2))
        colour_rows = np.clip(shade[:, None] * paint[None, :].astype(np.float32), 0, 255)
        alpha = mask.astype(np.float32)[..., None] / 255.0
        roi = img[ys, xs]
        roi[:] = (roi * (1.0 - alpha) + colour_rows[:, None, :] * alpha).astype(np.uint8)

    dark = paint * rng.uniform(0.35, 0.6)
    unit = s / 320.0  # line widths scale with car size
    # bumpers / sills in black plastic or body colour
    trim = np.array([30.0, 30, 32]) if rng.random() < 0.6 else dark
    c_ = shape.clear
    sill_h = 0.25 * (shape.belt - c_)
    for xa, xb in ((0.0, 0.06), (0.94, 1.0)):
        _poly(img, tf([(xa, c_), (xb, c_), (xb, c_ + sill_h), (xa, c_ + sill_h)]), trim)

    # windows
    tint = _random_colour(rng, (0, 0.5), (0.05, 0.45))
    for win in shape.windows:
        _poly(img, tf(win), tint)
        if rng.random() < 0.5:  # reflection streak
            (wx0, wy0), (wx1, wy1) = win.min(0), win.max(0)
            xm = rng.uniform(wx0, wx1)
            streak = _clip_x(np.array([(xm, wy0), (xm + 0.03, wy0), (xm + 0.06, wy1), (xm + 0.03, wy1)]), wx0, wx1)
            if len(streak):
                _poly(img, tf(streak), tint * 0.5 + 110)
    # door seams, handles, bed rail
    for xp in shape.pillars:
        top = shape.belt - 0.005
        _line(img, tf([(xp, top)])[0], tf([(xp, c_ + sill_h)])[0], dark, max(1, round(unit)))
        hx = xp - 0.06
        _line(img, tf([(hx, top - 0.02)])[0], tf([(hx + 0.03, top - 0.02)])[0], dark, max(1, round(1.5 * unit)))
    if shape.bed is not None:
        xb0, xb1, yb = shape.bed
        _line(img, tf([(xb0, yb)])[0], tf([(xb1, yb)])[0], dark, max(1, round(2 * unit)))
    # lights: headlamp at the front, tail lamp at the rear
    lamp_y = c_ + 0.55 * (shape.belt - c_)
    _ellipse(img, tf([(0.012, lamp_y)])[0], (0.02 * s, 0.012 * s), ang, rng.uniform(190, 255, 3))
    _ellipse(img, tf([(0.988, lamp_y)])[0], (0.012 * s, 0.014 * s), ang, (rng.uniform(150, 230), 20, 25))
    # wheels: dark arch, tyre, rim, hub
    rim = rng.uniform(60, 220) * np.ones(3) if rng.random() < 0.8 else paint
    tyre = rng.uniform(15, 45) * np.ones(3)
    for cx, cy, r in shape.wheels:
        c_px = tf([(cx, cy)])[0]
        _ellipse(img, c_px, (1.13 * r * s, 1.13 * r * s), ang, (12, 12, 12), 180, 360)
        _circle(img, c_px, r * s, tyre)
        _circle(img, c_px, r * s * rng.uniform(0.55, 0.7), rim)
        _circle(img, c_px, r * s * 0.18, rim * 0.5)
    return x0, yg - car_h, s, yg


def _draw_occluder(img: np.ndarray, box, rng: np.random.Generator) -> None:
    """Cover part of the car with a pole, bush or sign in front of it."""
    x0, y_top, s, yg = box
    width = s * rng.uniform(0.05, OCCLUSION_MAX_FRACTION)
    cx = rng.uniform(x0, x0 + s)
    kind = rng.integers(3)
    if kind == 0:  # pole
        half = width * 0.2
        _poly(img, np.array([(cx - half, -1), (cx + half, -1), (cx + half, yg + 3), (cx - half, yg + 3)]),
              _random_colour(rng, (0, 0.3), (0.1, 0.8)))
    elif kind == 1:  # bush hugging the ground
        leaf = _hsv_to_rgb(rng.uniform(50, 140), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.55))
        for _ in range(5):
            _ellipse(img, (cx + rng.uniform(-0.5, 0.5) * width, yg - rng.uniform(0, 0.4) * (yg - y_top)),
                     (width * rng.uniform(0.25, 0.5), width * rng.uniform(0.2, 0.4)), 0, leaf * rng.uniform(0.8, 1.2))
    else:  # sign or pedestrian-like block
        hgt = (yg - y_top) * rng.uniform(0.4, 1.2)
        _poly(img, _chaikin(np.array([(cx - width / 2, yg - hgt), (cx + width / 2, yg - hgt),
                                      (cx + width / 2, yg), (cx - width / 2, yg)]), 0.15),
              _random_colour(rng, (0, 0.9), (0.1, 1.0)))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; strong blurs run at half resolution (same look, ~3x faster)."""
    if sigma <= 1.5:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    h, w = img.shape[:2]
    small = cv2.resize(img, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), math.sqrt(sigma * sigma - 1.0) / 2.0)  # area averaging ~ sigma 1
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _check_int(name: str, value, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """Validate an integer argument and return it as ``int``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        if hint:
            allowed = hint
        elif high is None:
            allowed = f">= {low}"
        else:
            allowed = f"between {low} and {high}"
        raise ConfigError(f"{name} must be {allowed}, got {value}")
    return value


def render_car_image(class_id: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Render one synthetic photo of a car of ``class_id``.

    The class fixes only the vehicle's shape template; its proportions are
    jittered and everything else (paint, window tint, background, scale,
    position, facing, tilt, occlusion, lighting, noise, blur) is drawn from
    ``rng``.  So one class rendered with different generators looks very
    different, while the same generator state always gives the same image.

    Returns an ``(height, width, 3)`` uint8 array in RGB order.
    """
    class_id = _check_int("class_id", class_id, 0, _MAX_CLASSES - 1)
    width = _check_int("width", width, _MIN_IMAGE_WIDTH, _MAX_IMAGE_WIDTH)
    height = _check_int("height", height, _MIN_IMAGE_WIDTH, _MAX_IMAGE_WIDTH)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    img = np.zeros((height, width, 3), np.uint8)
    horizon = _draw_background(img, rng)
    if rng.random() < BACKGROUND_BLUR_PROB:  # shallow depth of field, as in car photos
        img = _blur(img, rng.uniform(0.5, BACKGROUND_BLUR_MAX_SIGMA) * width / 320.0)
    # hazier, lower-contrast backgrounds keep the car the main subject
    contrast = rng.uniform(*BACKGROUND_CONTRAST)
    haze = [float(v) * (1.0 - contrast) for v in cv2.mean(img)[:3]] + [0.0]
    img = cv2.add(cv2.convertScaleAbs(img, alpha=contrast), tuple(haze))  # values stay >= 0, so Abs is a no-op
    shape = _jittered_shape(class_id, rng)
    box = _draw_car(img, shape, rng, horizon)
    if rng.random() < OCCLUSION_PROB:
        _draw_occluder(img, box, rng)

    # lighting: global brightness, colour cast and a soft side light
    out = img.astype(np.float32)
    gain = rng.uniform(*BRIGHTNESS_RANGE) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32) * rng.uniform(-0.2, 0.2)
    out *= (1.0 + ramp)[None, :, None] * gain[None, None, :]
    # Gaussian-shaped pixel noise via a quantile table: ~5x faster than
    # rng.standard_normal, which dominated the generation time.
    sigma = np.float32(rng.uniform(0.0, NOISE_SIGMA_MAX))
    table = (_GAUSS_QUANTILES * sigma).reshape(1, 256)
    out += cv2.LUT(rng.integers(0, 256, out.shape, dtype=np.uint8), table)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < BLUR_PROB:
        out = _blur(out, max(0.3, rng.uniform(0.3, MAX_BLUR_SIGMA) * width / 320.0))
    return out


# --------------------------------------------------------------------------
# Dataset writing
# --------------------------------------------------------------------------


def _balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """Labels 0..num_classes-1, n // num_classes each; the first n % num_classes classes get one more."""
    counts = np.full(num_classes, n // num_classes)
    counts[: n % num_classes] += 1
    return np.repeat(np.arange(num_classes), counts)


def _encode_image(index: int, class_id: int, seed: int, min_width: int, max_width: int) -> bytes:
    """JPEG bytes of image ``index``; a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    width = int(rng.integers(min_width, max_width + 1))
    height = max(_MIN_IMAGE_WIDTH, int(round(width * rng.uniform(*ASPECT_RANGE))))
    rgb = render_car_image(class_id, rng, width, height)
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 only fails on invalid input
        raise OSError(f"JPEG encoding failed for image {index}")
    return buf.tobytes()


def _write_zip(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    """Write members in the given order with fixed metadata (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED  # JPEGs do not compress; keeps bytes stable
            info.create_system = 3  # fixed (default depends on the OS)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)


def _write_csv(path: pathlib.Path, rows: list[tuple[str, int]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "Category"])
        writer.writerows(rows)


def _same_dataset(a: pathlib.Path, b: pathlib.Path) -> bool:
    """True if folder ``b`` holds byte-identical copies of all dataset files in ``a``."""
    return all((b / n).is_file() and filecmp.cmp(a / n, b / n, shallow=False) for n in DATASET_FILES)


def _publish(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Atomically move the finished ``tmp`` folder to ``out``.

    If ``out`` already holds the identical dataset (another process won the
    race, or the dataset was generated before), it is kept as is.
    """
    try:
        os.rename(tmp, out)  # atomic; also replaces an empty folder on POSIX
        return
    except OSError:
        pass
    if out.is_dir() and not any(out.iterdir()):
        try:  # empty placeholder folder (e.g. on Windows): replace it
            out.rmdir()
            os.rename(tmp, out)
            return
        except OSError:
            pass
    if out.is_dir() and _same_dataset(tmp, out):
        return
    raise OutputExistsError(
        f"out_dir {str(out)!r} already exists and does not hold the dataset for these arguments; "
        "remove it or choose another folder"
    )


def generate_car_dataset(
    out_dir,
    *,
    n_train: int = 1000,
    n_test: int = 300,
    seed: int = DEFAULT_SEED,
    num_classes: int = 10,
    min_width: int = 160,
    max_width: int = 480,
) -> pathlib.Path:
    """Write the dataset into out_dir (created if needed) and return out_dir.

    Writes ``train.zip`` (``train/<class>/<name>.jpg``), ``test.zip``
    (``test_upload/<name>.jpg``), ``train.csv``, ``sample-submission.csv``
    (every test file, Category 0) and ``test-answers.csv`` (true test labels).
    Classes ``0..num_classes-1`` are the first entries of ``CLASS_NAMES``;
    train and test labels are balanced (counts differ by at most one).
    File names are unique shuffled integers shared by train and test.

    The same arguments always give byte-identical files.  The folder is built
    under a temporary sibling name and renamed into place, so readers never
    see a partial dataset.  If ``out_dir`` already exists and holds the
    identical dataset it is left untouched (so repeated or concurrent calls
    are safe); if it holds anything else a ``FileExistsError`` is raised and
    nothing is overwritten.  An empty existing folder is replaced.

    Raises :class:`~carlib.errors.ConfigError` (a ``ValueError``) for invalid arguments, naming the parameter.
    """
    num_classes = _check_int("num_classes", num_classes, 2, _MAX_CLASSES)
    n_train = _check_int("n_train", n_train, num_classes,
                         hint=f">= num_classes ({num_classes}) so every class has a training image")
    n_test = _check_int("n_test", n_test, 1)
    seed = _check_int("seed", seed, 0)
    min_width = _check_int("min_width", min_width, _MIN_IMAGE_WIDTH, _MAX_IMAGE_WIDTH)
    max_width = _check_int("max_width", max_width, _MIN_IMAGE_WIDTH, _MAX_IMAGE_WIDTH)
    if min_width > max_width:
        raise ConfigError(f"min_width must be <= max_width, got min_width={min_width} > max_width={max_width}")

    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"out_dir {str(out)!r} exists and is not a folder")
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)

    # Layout: balanced labels; shuffled unique names so a name reveals nothing.
    train_labels = _balanced_labels(n_train, num_classes)
    test_labels = _balanced_labels(n_test, num_classes)
    labels = np.concatenate([train_labels, test_labels])
    total = n_train + n_test
    layout_rng = np.random.default_rng([seed, *_LAYOUT_STREAM])
    names = [f"{int(k)}.jpg" for k in layout_rng.permutation(total) + 1]
    images = [_encode_image(i, int(labels[i]), seed, min_width, max_width) for i in range(total)]

    train = sorted(((int(labels[i]), names[i], images[i]) for i in range(n_train)),
                   key=lambda r: (r[0], int(r[1][:-4])))
    test = sorted(((int(labels[i]), names[i], images[i]) for i in range(n_train, total)),
                  key=lambda r: int(r[1][:-4]))

    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(tmp, new_folder_mode())  # mkdtemp makes it private; the dataset is not secret: mkdir's mode
        _write_zip(tmp / "train.zip", [(f"train/{c}/{n}", data) for c, n, data in train])
        _write_zip(tmp / "test.zip", [(f"test_upload/{n}", data) for _, n, data in test])
        _write_csv(tmp / "train.csv", sorted(((n, c) for c, n, _ in train), key=lambda r: int(r[0][:-4])))
        _write_csv(tmp / "sample-submission.csv", [(n, 0) for _, n, _ in test])
        _write_csv(tmp / "test-answers.csv", [(n, c) for c, n, _ in test])
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
