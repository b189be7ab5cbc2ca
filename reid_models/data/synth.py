"""A synthetic multi-camera person ReID benchmark, rendered procedurally with PIL and numpy.

Why synthetic: no real ReID data can be downloaded here, yet the product must be able to tell
pruning criteria and scenarios apart. So the generator is built to be *hard in the ways real
ReID is hard*:

- identity lives in many weak cues (clothing colour *and* pattern, bottom type, hair, shoes, bag
  and its side, hat, body shape), drawn from small palettes so that no single cue -- and no
  colour histogram -- identifies a person;
- identities come in *families* of look-alikes (`family_size`): members share the outfit's
  colours and types and differ in a few visible attributes (`family_changes` of: shoe colour,
  hair, bag or its side, hat, sleeves, a logo), so the nearest wrong match is usually a
  sibling, as with people in the same uniform;
- each image varies pose (walking phase, lean, scale), viewpoint (front/back/side changes what is
  visible: a logo only from the front, a backpack mostly from the back), occlusion by other
  pedestrians (in front or behind) and by objects, background clutter, and bounding-box
  misalignment (the detector's box too tight, too loose or shifted);
- each camera has a style (illumination, colour temperature, gamma/contrast, blur, noise,
  resolution loss, JPEG quality, background scene, viewpoint mix);
- the target domain has its own cameras with styles the source never shows (night blue cast,
  low resolution, motion blur, CCTV tint) and a shifted clothing distribution.

Version 2 (`SYNTH_VERSION`) made it hard enough that a source model no longer saturates its
test (docs/RESULTS.md section 2). `info.json` records the version and the generation settings;
`reid-prune` regenerates a folder whose `info.json` differs from what the settings ask for.

Output is Market-1501 layout (`bounding_box_train/`, `bounding_box_test/`, `query/`, names
`PPPP_cCsS_FFFFFF_NN.jpg`) plus `manifest.csv` (path,pid,camid,split; camid 0-based as in
torchreid). Every image has its own seed derived from (seed, domain, pid, camera, index), so the
output is byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

HEIGHT, WIDTH = 128, 64  # Market-1501's box size
DOMAINS = ("source", "target")
VIEWS = ("front", "back", "left", "right")
PATTERNS = ("solid", "hstripes", "vstripes", "checks", "logo", "split")
BOTTOMS = ("trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "bald", "ponytail")
BAGS = ("none", "backpack", "shoulder", "handbag")
HATS = ("none", "cap", "beanie")

SKIN = [(241, 194, 160), (224, 172, 125), (198, 134, 92), (141, 85, 54), (96, 60, 40)]
HAIR = [(25, 20, 18), (70, 45, 25), (140, 95, 50), (200, 170, 110), (150, 150, 150)]
# Clothing palettes overlap between domains but with different frequencies: the target wears
# darker winter colours and more patterns (a shifted clothing distribution).
CLOTH = {
    "source": [(200, 30, 30), (30, 60, 170), (240, 240, 235), (25, 25, 25), (40, 130, 60),
               (230, 200, 40), (120, 120, 125), (240, 130, 30), (150, 60, 150), (90, 170, 220)],
    "target": [(25, 25, 30), (60, 40, 30), (110, 20, 35), (20, 50, 90), (70, 80, 60),
               (120, 120, 125), (200, 190, 170), (170, 90, 40), (30, 100, 100), (200, 30, 30)],
}
PATTERN_WEIGHTS = {"source": [0.4, 0.15, 0.1, 0.1, 0.15, 0.1], "target": [0.2, 0.15, 0.1, 0.2, 0.25, 0.1]}


@dataclass(frozen=True)
class CameraStyle:
    brightness: float  # global gain
    tint: tuple[float, float, float]  # per-channel gain: colour temperature / CCTV cast
    gamma: float
    contrast: float
    blur: float  # gaussian radius in pixels
    motion: int  # horizontal motion-blur length in pixels (0 = none)
    noise: float  # gaussian noise sigma (0..255 scale)
    resolution: float  # downscale factor before upscaling back (1 = none)
    jpeg: int
    scene: int  # background scene seed
    sky: tuple[int, int, int]
    ground: tuple[int, int, int]
    view_mix: tuple[float, float, float, float]  # P(front, back, left, right)


CAMERAS: dict[str, list[CameraStyle]] = {
    "source": [  # daylight street and indoor cameras
        CameraStyle(1.00, (1.00, 1.00, 1.00), 1.0, 1.00, 0.0, 0, 3, 1.0, 90, 1, (150, 170, 190), (110, 110, 105), (.4, .4, .1, .1)),
        CameraStyle(1.10, (1.05, 1.00, 0.92), 0.9, 1.10, 0.4, 0, 4, 1.0, 85, 2, (180, 170, 150), (140, 125, 100), (.2, .2, .3, .3)),
        CameraStyle(0.85, (0.95, 1.00, 1.05), 1.1, 0.90, 0.6, 0, 5, 0.8, 80, 3, (100, 110, 120), (80, 85, 90), (.3, .5, .1, .1)),
        CameraStyle(1.05, (1.00, 1.03, 0.97), 1.0, 1.05, 0.0, 0, 3, 0.9, 90, 4, (200, 200, 190), (160, 150, 140), (.5, .2, .15, .15)),
        CameraStyle(0.95, (1.02, 0.98, 1.00), 1.2, 0.95, 0.8, 0, 6, 0.75, 75, 5, (120, 140, 110), (90, 100, 70), (.25, .25, .25, .25)),
        CameraStyle(1.15, (1.00, 1.00, 1.00), 0.85, 1.15, 0.3, 0, 4, 1.0, 88, 6, (210, 220, 230), (170, 170, 175), (.1, .3, .3, .3)),
        CameraStyle(0.90, (1.00, 0.97, 1.03), 1.05, 1.00, 0.5, 0, 5, 0.85, 82, 7, (140, 150, 160), (100, 95, 90), (.3, .3, .2, .2)),  # overcast
        CameraStyle(1.05, (1.04, 1.00, 0.96), 0.95, 1.05, 0.2, 0, 4, 0.9, 86, 8, (190, 180, 170), (130, 120, 110), (.2, .4, .2, .2)),  # mall
    ],
    "target": [  # styles the source never shows
        CameraStyle(0.70, (0.80, 0.90, 1.25), 1.10, 0.90, 0.5, 0, 9, 0.75, 70, 11, (30, 35, 70), (40, 40, 55), (.35, .35, .15, .15)),  # night, blue cast
        CameraStyle(1.00, (1.00, 1.00, 1.00), 1.0, 1.00, 0.0, 0, 5, 0.5, 55, 12, (160, 150, 140), (120, 115, 110), (.25, .25, .25, .25)),  # low resolution
        CameraStyle(0.95, (0.92, 1.10, 0.90), 1.05, 0.95, 0.0, 5, 7, 0.85, 65, 13, (90, 120, 90), (70, 90, 70), (.1, .1, .4, .4)),  # CCTV green, motion blur
        CameraStyle(1.20, (1.10, 1.03, 0.82), 0.8, 0.80, 0.7, 0, 6, 0.85, 70, 14, (230, 210, 160), (200, 180, 130), (.4, .3, .15, .15)),  # overexposed warm indoor
        CameraStyle(0.80, (0.85, 0.85, 0.85), 1.0, 1.20, 1.0, 3, 8, 0.65, 60, 15, (60, 60, 65), (50, 50, 50), (.3, .4, .15, .15)),  # grey, blurred, contrasty
        CameraStyle(0.85, (1.15, 0.95, 0.80), 1.00, 1.05, 0.6, 2, 7, 0.70, 62, 16, (120, 80, 50), (90, 70, 50), (.3, .3, .2, .2)),  # sodium street light
    ],
}


@dataclass(frozen=True)
class Identity:
    """Persistent appearance of one person."""

    height: float
    width: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    top: tuple[int, int, int]
    top2: tuple[int, int, int]  # pattern colour
    pattern: str
    logo_shape: int
    long_sleeves: bool
    bottom: tuple[int, int, int]
    bottom_type: str
    shoes: tuple[int, int, int]
    bag: str
    bag_side: int  # -1 left, +1 right
    bag_colour: tuple[int, int, int]
    hat: str
    hat_colour: tuple[int, int, int]


def _jitter(rng: np.random.Generator, colour, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


SHOES = [(20, 20, 20), (240, 240, 240), (120, 70, 40), (200, 30, 30), (40, 60, 140)]
# What tells two members of a look-alike family apart: one or two of these differ.
FAMILY_DIFFERENCES = ("shoes", "hair", "bag", "bag_side", "hat", "sleeves", "logo")


def _base_identity(rng: np.random.Generator, domain: str) -> Identity:
    cloth = CLOTH[domain]

    def pick(options, p=None):
        return options[rng.choice(len(options), p=p)]

    top_base = pick(cloth)
    top = _jitter(rng, top_base)
    return Identity(
        height=float(rng.uniform(0.84, 1.0)),
        width=float(rng.uniform(0.8, 1.2)),
        skin=_jitter(rng, pick(SKIN), 10),
        hair=_jitter(rng, pick(HAIR), 10),
        hair_style=pick(HAIR_STYLES, [0.4, 0.3, 0.1, 0.2]),
        top=top,
        top2=_jitter(rng, pick([c for c in cloth if c != top_base] + [(245, 245, 245)])),
        pattern=pick(PATTERNS, PATTERN_WEIGHTS[domain]),
        logo_shape=int(rng.integers(3)),
        long_sleeves=bool(rng.random() < (0.5 if domain == "source" else 0.75)),
        bottom=_jitter(rng, pick(cloth)),
        bottom_type=pick(BOTTOMS, [0.6, 0.2, 0.2] if domain == "source" else [0.75, 0.05, 0.2]),
        shoes=_jitter(rng, pick(SHOES), 10),
        bag=pick(BAGS, [0.35, 0.25, 0.25, 0.15]),
        bag_side=int(rng.choice([-1, 1])),
        bag_colour=_jitter(rng, pick(cloth)),
        hat=pick(HATS, [0.7, 0.15, 0.15] if domain == "source" else [0.55, 0.15, 0.3]),
        hat_colour=_jitter(rng, pick(cloth)),
    )


def _family_member(base: Identity, rng: np.random.Generator, domain: str, changes: int) -> Identity:
    """`base` with its body resampled and `changes` small attributes changed, each visibly: a
    bag side only when there is a bag to carry, a new hat or bag of another kind, shoes or hair
    of another colour."""

    def other(options, current):
        return [o for o in options if o != current][rng.choice(len(options) - 1)]

    def far_colour(palette, current, amount):
        colours = [c for c in palette if sum(abs(a - b) for a, b in zip(c, current)) > 90] or palette
        return _jitter(rng, colours[rng.choice(len(colours))], amount)

    change: dict = {"height": float(np.clip(base.height + rng.normal(0, 0.04), 0.82, 1.0)),
                    "width": float(np.clip(base.width + rng.normal(0, 0.08), 0.8, 1.2)),
                    "skin": _jitter(rng, base.skin, 12)}
    possible = [a for a in FAMILY_DIFFERENCES if a != "bag_side" or base.bag in ("shoulder", "handbag")]
    for attribute in rng.choice(possible, size=min(changes, len(possible)), replace=False):
        if attribute == "shoes":
            change["shoes"] = far_colour(SHOES, base.shoes, 10)
        elif attribute == "hair":
            change["hair"] = far_colour(HAIR, base.hair, 10)
            change["hair_style"] = other(HAIR_STYLES[:2], base.hair_style) if base.hair_style in HAIR_STYLES[:2] \
                else base.hair_style
        elif attribute == "bag":
            change["bag"] = other(BAGS, base.bag)
        elif attribute == "bag_side":
            change["bag_side"] = -base.bag_side
        elif attribute == "hat":
            change["hat"] = other(HATS, base.hat)
            change["hat_colour"] = _jitter(rng, CLOTH[domain][rng.choice(len(CLOTH[domain]))])
        elif attribute == "sleeves":
            change["long_sleeves"] = not base.long_sleeves
        else:  # a chest logo on a top without one, or another logo shape
            change["pattern"] = "logo"
            change["logo_shape"] = (base.logo_shape + int(rng.integers(1, 3))) % 3 if base.pattern == "logo" \
                else base.logo_shape
    return replace(base, **change)


def sample_identity(seed: int, domain: str, pid: int, family_size: int = 1, changes: int = 3) -> Identity:
    """Persistent appearance of `pid`: its family's outfit with its own small differences.

    Families are runs of `family_size` consecutive pids ((pid - 1) // family_size), so the
    planner starts the test identities on a family boundary and no family spans two splits.
    """
    family = (pid - 1) // family_size
    base = _base_identity(np.random.default_rng([seed, DOMAINS.index(domain), family, 7]), domain)
    if family_size == 1:
        return base
    return _family_member(base, np.random.default_rng([seed, DOMAINS.index(domain), pid, 8]), domain, changes)


# ---------------------------------------------------------------------------------------------
# Rendering one person


def _background(style: CameraStyle, rng: np.random.Generator) -> Image.Image:
    """Camera scene: sky/wall gradient, ground plane and a few facade blocks, shifted per image."""
    img = Image.new("RGB", (WIDTH, HEIGHT), style.sky)
    draw = ImageDraw.Draw(img)
    scene = np.random.default_rng(style.scene)
    offset = int(rng.integers(-20, 21))
    for _ in range(6):
        x0 = int(scene.integers(-30, WIDTH)) + offset
        w = int(scene.integers(10, 40))
        y0 = int(scene.integers(0, HEIGHT // 2))
        colour = _jitter(scene, style.sky, 50)
        draw.rectangle([x0, y0, x0 + w, HEIGHT], fill=colour)
        for wy in range(y0 + 4, HEIGHT - 40, 12):  # windows
            draw.rectangle([x0 + 3, wy, x0 + 8, wy + 5], fill=_jitter(scene, colour, 60))
    horizon = int(HEIGHT * 0.62) + int(rng.integers(-6, 7))
    draw.rectangle([0, horizon, WIDTH, HEIGHT], fill=style.ground)
    draw.line([0, horizon, WIDTH, horizon], fill=_jitter(scene, style.ground, 40), width=2)
    return img


def _torso_pattern(layer: Image.Image, box, who: Identity, view: str) -> None:
    """Draw the top's pattern inside `box` on a transparent layer (masked by the torso later)."""
    draw = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = box
    c2 = who.top2 + (255,)
    if who.pattern == "hstripes":
        for y in range(int(y0), int(y1), 6):
            draw.rectangle([x0, y, x1, y + 2], fill=c2)
    elif who.pattern == "vstripes":
        for x in range(int(x0), int(x1), 6):
            draw.rectangle([x, y0, x + 2, y1], fill=c2)
    elif who.pattern == "checks":
        for y in range(int(y0), int(y1), 8):
            for x in range(int(x0) + (y // 8 % 2) * 4, int(x1), 8):
                draw.rectangle([x, y, x + 3, y + 3], fill=c2)
    elif who.pattern == "split":  # two-tone: lower half in the second colour
        draw.rectangle([x0, (y0 + y1) / 2, x1, y1], fill=c2)
    elif who.pattern == "logo" and view == "front":  # a chest logo, invisible from behind
        cx, cy, r = (x0 + x1) / 2, y0 + (y1 - y0) * 0.35, (x1 - x0) * 0.22
        if who.logo_shape == 0:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c2)
        elif who.logo_shape == 1:
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=c2)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c2)


@dataclass(frozen=True)
class Pose:
    """Where and how a person stands in the box."""

    view: str
    phase: float  # walking phase: leg and arm swing
    scale: float  # body height as a share of the box
    cx: float  # horizontal centre in pixels
    top_y: float  # head top in pixels
    lean: float  # degrees, rotation of the whole body


def sample_pose(who: Identity, style: CameraStyle, rng: np.random.Generator) -> Pose:
    view = VIEWS[rng.choice(4, p=style.view_mix)]
    scale = who.height * float(rng.uniform(0.84, 1.08))
    return Pose(view=view, phase=float(rng.uniform(-1.3, 1.3)), scale=scale,
                cx=WIDTH / 2 + float(rng.normal(0, 3.5)),
                top_y=HEIGHT * (1 - scale) * 0.5 + float(rng.normal(2, 3)), lean=float(rng.normal(0, 4)))


def draw_person(who: Identity, pose: Pose) -> Image.Image:
    """`who` in `pose` on a transparent RGBA layer of the box's size."""
    view, phase, cx, top_y = pose.view, pose.phase, pose.cx, pose.top_y
    side = view in ("left", "right")
    H = HEIGHT * pose.scale * 0.94
    half_w = WIDTH * 0.27 * who.width * (0.7 if side else 1.0)

    def y(f: float) -> float:
        return top_y + f * H

    person = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
    draw = ImageDraw.Draw(person)
    facing = {"left": -1, "right": 1}.get(view, 0)

    # Bag behind the body (backpack seen from front or side; shoulder bag on the hidden side).
    if who.bag == "backpack" and side:
        bx = cx - facing * half_w * 1.1
        draw.rectangle([bx - 6, y(0.2), bx + 6, y(0.42)], fill=who.bag_colour + (255,))

    # Legs: swing with the walking phase; bottom type decides how much skin shows.
    swing = phase * half_w * (0.55 if side else 0.2)
    hip, knee, ankle = y(0.5), y(0.72), y(0.95)
    for leg, sign in ((0, -1), (1, 1)):
        lx = cx + sign * half_w * (0.15 if side else 0.45)
        foot_x = lx + (swing if leg == 0 else -swing)
        cover = ankle if who.bottom_type == "trousers" else knee if who.bottom_type == "shorts" else hip
        draw.line([lx, hip, foot_x, ankle], fill=who.skin + (255,), width=max(3, int(half_w * 0.55)))
        if cover > hip:
            t = (cover - hip) / (ankle - hip)
            draw.line([lx, hip, lx + (foot_x - lx) * t, cover], fill=who.bottom + (255,),
                      width=max(4, int(half_w * 0.7)))
        draw.ellipse([foot_x - 4 + facing * 2, ankle - 2, foot_x + 4 + facing * 2, ankle + 3],
                     fill=who.shoes + (255,))
    if who.bottom_type == "skirt":
        draw.polygon([(cx - half_w * 0.9, hip - 2), (cx + half_w * 0.9, hip - 2),
                      (cx + half_w * 1.25, y(0.68)), (cx - half_w * 1.25, y(0.68))], fill=who.bottom + (255,))
    else:
        draw.rectangle([cx - half_w * 0.85, hip - 3, cx + half_w * 0.85, hip + 4], fill=who.bottom + (255,))

    # Torso with its pattern, masked to the torso shape.
    torso = [(cx - half_w, y(0.2)), (cx + half_w, y(0.2)), (cx + half_w * 0.85, hip), (cx - half_w * 0.85, hip)]
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    ImageDraw.Draw(mask).polygon(torso, fill=255)
    cloth = Image.new("RGBA", (WIDTH, HEIGHT), who.top + (255,))
    _torso_pattern(cloth, (cx - half_w, y(0.2), cx + half_w, hip), who, view)
    person.paste(cloth, (0, 0), mask)
    draw = ImageDraw.Draw(person)

    # Arms: upper arm in the top's colour, forearm skin unless long sleeves.
    arm_swing = -phase * half_w * (0.6 if side else 0.15)
    for sign in (-1, 1):
        if side and sign == facing:
            continue  # the far arm is hidden
        sx = cx + sign * half_w * (0.3 if side else 1.0)
        ex, ey = sx + arm_swing * 0.5 + sign * 2, y(0.35)
        hx, hy = sx + arm_swing + sign * 2, y(0.5)
        width = max(3, int(half_w * 0.4))
        draw.line([sx, y(0.22), ex, ey], fill=who.top + (255,), width=width)
        draw.line([ex, ey, hx, hy], fill=(who.top if who.long_sleeves else who.skin) + (255,), width=width)
        if who.bag == "handbag" and sign == who.bag_side:
            draw.rectangle([hx - 4, hy, hx + 4, hy + 9], fill=who.bag_colour + (255,))

    # Shoulder bag: strap across the chest and a bag at the hip on its side.
    if who.bag == "shoulder":
        bx = cx + who.bag_side * half_w * (0.9 if not side else 0.4)
        draw.line([cx - who.bag_side * half_w * 0.8, y(0.2), bx, y(0.45)], fill=who.bag_colour + (255,), width=2)
        if not (side and who.bag_side == facing):
            draw.rectangle([bx - 5, y(0.42), bx + 5, y(0.55)], fill=who.bag_colour + (255,))
    if who.bag == "backpack":
        if view == "back":
            draw.rectangle([cx - half_w * 0.75, y(0.21), cx + half_w * 0.75, y(0.45)], fill=who.bag_colour + (255,))
        elif view == "front":
            for sign in (-1, 1):
                draw.line([cx + sign * half_w * 0.6, y(0.2), cx + sign * half_w * 0.6, y(0.4)],
                          fill=who.bag_colour + (255,), width=2)

    # Head, hair and hat.
    r = half_w * (0.62 if not side else 0.85)
    hy0, hy1 = y(0.05), y(0.19)
    draw.rectangle([cx - 2, hy1 - 2, cx + 2, y(0.21)], fill=who.skin + (255,))  # neck
    draw.ellipse([cx - r, hy0, cx + r, hy1], fill=who.skin + (255,))
    hair = who.hair + (255,)
    if who.hair_style != "bald":
        if view == "back":
            draw.ellipse([cx - r, hy0 - 1, cx + r, hy1], fill=hair)
        else:
            draw.chord([cx - r - 1, hy0 - 2, cx + r + 1, hy1], 180, 360, fill=hair)
        if who.hair_style == "long":
            draw.rectangle([cx - r, (hy0 + hy1) / 2, cx + r, y(0.27)] if view == "back"
                           else [cx - r - 1, (hy0 + hy1) / 2, cx - r + 2, y(0.26)], fill=hair)
            if view != "back":
                draw.rectangle([cx + r - 2, (hy0 + hy1) / 2, cx + r + 1, y(0.26)], fill=hair)
        if who.hair_style == "ponytail":
            px = cx - facing * r if side else cx
            draw.ellipse([px - 3, hy1 - 4, px + 3, y(0.26)], fill=hair)
    if view == "front":
        for sign in (-1, 1):
            draw.point([(cx + sign * r * 0.4, (hy0 + hy1) / 2)], fill=(20, 20, 20, 255))
    if who.hat == "cap":
        draw.chord([cx - r - 1, hy0 - 3, cx + r + 1, hy1 - 2], 180, 360, fill=who.hat_colour + (255,))
        if view != "back":
            peak = facing * r if side else 0
            draw.rectangle([cx + peak - r * 0.7, hy0 + (hy1 - hy0) * 0.35, cx + peak + r * 0.7,
                            hy0 + (hy1 - hy0) * 0.45], fill=who.hat_colour + (255,))
    elif who.hat == "beanie":
        draw.ellipse([cx - r - 1, hy0 - 4, cx + r + 1, hy0 + (hy1 - hy0) * 0.55], fill=who.hat_colour + (255,))

    if abs(pose.lean) > 0.5:
        person = person.rotate(pose.lean, resample=Image.BILINEAR, center=(cx, y(0.95)))
    return person


def _clutter(img: Image.Image, rng: np.random.Generator) -> None:
    """Street furniture behind the person: poles, bins, signs, shrubs, in random colours."""
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        colour = tuple(int(c) for c in rng.integers(20, 236, 3))
        x, kind = int(rng.integers(-8, WIDTH)), int(rng.integers(4))
        base = int(HEIGHT * rng.uniform(0.6, 0.95))
        if kind == 0:  # pole
            draw.rectangle([x, 0, x + int(rng.integers(2, 6)), base], fill=colour)
        elif kind == 1:  # bin or box
            w, h = int(rng.integers(8, 18)), int(rng.integers(10, 26))
            draw.rectangle([x, base - h, x + w, base], fill=colour)
        elif kind == 2:  # sign on a post
            draw.rectangle([x + 3, base - 45, x + 5, base], fill=(90, 90, 90))
            draw.rectangle([x - 4, base - 55, x + 12, base - 42], fill=colour)
        else:  # shrub
            r = int(rng.integers(6, 14))
            draw.ellipse([x - r, base - 2 * r, x + r, base], fill=colour)


def _misalign(img: Image.Image, style: CameraStyle, rng: np.random.Generator) -> Image.Image:
    """A detector's box: too tight or too loose by up to ~15%, and shifted, filled with the ground."""
    zoom = float(rng.uniform(0.87, 1.15))  # > 1: the box is too loose, the person smaller
    dx, dy = float(rng.normal(0, 4)), float(rng.normal(0, 5))
    cx, cy = WIDTH / 2, HEIGHT / 2
    # output (u, v) samples input (zoom * (u - cx) + cx + dx, zoom * (v - cy) + cy + dy)
    coefficients = (zoom, 0, cx * (1 - zoom) + dx, 0, zoom, cy * (1 - zoom) + dy)
    return img.transform((WIDTH, HEIGHT), Image.AFFINE, coefficients, resample=Image.BILINEAR,
                         fillcolor=style.ground)


def render_person(who: Identity, style: CameraStyle, rng: np.random.Generator,
                  passerby: Identity | None = None) -> Image.Image:
    """One bounding box of `who` seen by a camera with `style`; per-image randomness from `rng`.

    `passerby`, when given, may walk beside `who`: partly hidden behind, or partly in front.
    """
    img = _background(style, rng)
    _clutter(img, rng)
    pose = sample_pose(who, style, rng)
    other = None
    if passerby is not None and rng.random() < 0.35:
        offset = float(rng.choice([-1, 1]) * rng.uniform(20, 38))
        other_pose = replace(sample_pose(passerby, style, rng), cx=pose.cx + offset)
        other = draw_person(passerby, other_pose), bool(rng.random() < 0.5)
    if other and not other[1]:
        img.paste(other[0], (0, 0), other[0])
    person = draw_person(who, pose)
    img.paste(person, (0, 0), person)
    if other and other[1]:
        img.paste(other[0], (0, 0), other[0])

    # Partial occlusion by an object: a pole, a car bonnet or a railing in front of the person.
    if rng.random() < 0.2:
        odraw = ImageDraw.Draw(img)
        kind = rng.integers(3)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if kind == 0:
            x = int(rng.integers(0, WIDTH - 6))
            odraw.rectangle([x, 0, x + int(rng.integers(4, 9)), HEIGHT], fill=colour)
        elif kind == 1:
            odraw.rectangle([0, int(HEIGHT * rng.uniform(0.7, 0.85)), WIDTH, HEIGHT], fill=colour)
        else:
            top = int(HEIGHT * rng.uniform(0.55, 0.7))
            for bar in range(top, HEIGHT, 9):
                odraw.rectangle([0, bar, WIDTH, bar + 2], fill=colour)
    return _apply_camera(_misalign(img, style, rng), style, rng)


def _apply_camera(img: Image.Image, style: CameraStyle, rng: np.random.Generator) -> Image.Image:
    """Photometric and optical style of a camera: blur, resolution, light, colour, noise."""
    if style.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(style.blur * float(rng.uniform(0.7, 1.3))))
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    if style.motion > 0:  # horizontal motion blur: average of shifted copies
        length = style.motion + int(rng.integers(-2, 3))
        pixels = np.mean([np.roll(pixels, s - length // 2, axis=1) for s in range(max(1, length))], axis=0)
    light = style.brightness * float(rng.uniform(0.85, 1.15))
    pixels = np.clip(pixels * light * np.asarray(style.tint, dtype=np.float32), 0, 1) ** style.gamma
    pixels = (pixels - pixels.mean()) * style.contrast + pixels.mean()
    pixels = pixels + rng.normal(0, style.noise / 255.0, pixels.shape).astype(np.float32)
    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    if style.resolution < 1:
        small = (max(8, int(WIDTH * style.resolution)), max(16, int(HEIGHT * style.resolution)))
        img = img.resize(small, Image.BILINEAR).resize((WIDTH, HEIGHT), Image.BILINEAR)
    return img


# ---------------------------------------------------------------------------------------------
# Writing a domain in Market-1501 layout


SYNTH_VERSION = 2  # bump when rendering changes: folders of another version are regenerated


@dataclass(frozen=True)
class DomainSpec:
    """What to render for one domain; recorded in the folder's info.json."""

    train_ids: int = 200  # identities for training (the validation split is carved from these)
    test_ids: int = 800  # identities for query/gallery
    min_cameras: int = 3  # cameras each identity visits, at least
    images_per_camera: tuple[int, int] = (1, 4)  # training identities: images per visited camera
    test_images_per_camera: tuple[int, int] = (2, 2)  # test: one query + the rest gallery, per camera
    family_size: int = 2  # look-alike identities per family (1: every identity unrelated)
    family_changes: int = 3  # visible attributes in which a member differs from its family's outfit

    def check(self) -> None:
        if self.train_ids < 2 or self.test_ids < 2:
            raise ValueError(f"need at least 2 training and 2 test identities, got {self.train_ids} and "
                             f"{self.test_ids}")
        if self.min_cameras < 2:
            raise ValueError(f"min_cameras must be >= 2 (ReID matches across cameras), got {self.min_cameras}")
        if not 1 <= self.images_per_camera[0] <= self.images_per_camera[1]:
            raise ValueError("images_per_camera must be (low, high) with 1 <= low <= high")
        if not 2 <= self.test_images_per_camera[0] <= self.test_images_per_camera[1]:
            raise ValueError("test_images_per_camera must be (low, high) with 2 <= low <= high: "
                             "a query and at least one gallery image per camera")
        if self.family_size < 1 or self.family_changes < 1:
            raise ValueError(f"family_size and family_changes must be >= 1, got {self.family_size} and "
                             f"{self.family_changes}")

    def info(self, domain: str, seed: int) -> dict:
        return {"version": SYNTH_VERSION, "domain": domain, "seed": seed,
                **{key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}}


@dataclass(frozen=True)
class ImageJob:
    pid: int
    cam: int  # 0-based
    index: int  # image index of this (pid, cam)
    split: str  # train | query | gallery
    frame: int


def pids_for_testing(spec: DomainSpec) -> range:
    """Test identities start on a family boundary, so no family spans train and test."""
    first = -(-spec.train_ids // spec.family_size) * spec.family_size + 1
    return range(first, first + spec.test_ids)


def plan_domain(domain: str, spec: DomainSpec, seed: int) -> list[ImageJob]:
    """Which images exist: each identity visits a random subset of the domain's cameras.

    Training identities are pids 1..train_ids; test identities follow (see `pids_for_testing`). For a
    test identity one image per camera becomes a query and the rest go to the gallery
    (Market-1501's rule).
    """
    n_cams = len(CAMERAS[domain])
    rng = np.random.default_rng([seed, DOMAINS.index(domain), 99])
    jobs: list[ImageJob] = []
    for pid in [*range(1, spec.train_ids + 1), *pids_for_testing(spec)]:
        is_test = pid > spec.train_ids
        low, high = spec.test_images_per_camera if is_test else spec.images_per_camera
        visited = sorted(rng.choice(n_cams, size=int(rng.integers(min(spec.min_cameras, n_cams), n_cams + 1)),
                                    replace=False))
        for cam in visited:
            count = int(rng.integers(low, high + 1))
            for index in range(count):
                split = "query" if is_test and index == 0 else "gallery" if is_test else "train"
                jobs.append(ImageJob(pid, int(cam), index, split, int(rng.integers(0, 999999))))
    return jobs


SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
PASSERBY_PIDS = 1_000_000  # passers-by are identities outside the dataset's pids


def image_name(job: ImageJob) -> str:
    return f"{job.pid:04d}_c{job.cam + 1}s1_{job.frame:06d}_{job.index + 1:02d}.jpg"


def _render_job(args: tuple[int, str, DomainSpec, ImageJob]) -> bytes:
    seed, domain, spec, job = args
    who = sample_identity(seed, domain, job.pid, spec.family_size, spec.family_changes)
    style = CAMERAS[domain][job.cam]
    rng = np.random.default_rng([seed, DOMAINS.index(domain), job.pid, job.cam, job.index])
    passerby = sample_identity(seed, domain, PASSERBY_PIDS + int(rng.integers(PASSERBY_PIDS)))
    img = render_person(who, style, rng, passerby)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=style.jpeg)
    return buffer.getvalue()


def read_info(folder: str | Path) -> dict | None:
    """The generation record of a rendered folder, or None when there is none."""
    path = Path(folder) / "info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def generate_domain(out: str | Path, domain: str, seed: int = 0, spec: DomainSpec = DomainSpec(),
                    workers: int = 2) -> Path:
    """Render a whole domain into `out` (Market-1501 layout + manifest.csv + info.json).

    Written into a temporary sibling folder and renamed at the end, so a crash never leaves a
    half-written dataset behind.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
    spec.check()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.csv").is_file():
        raise ValueError(f"{out} exists and is not a generated dataset (no manifest.csv); "
                         "choose an empty or new folder")
    jobs = plan_domain(domain, spec, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for folder in SPLIT_DIRS.values():
            (staging / folder).mkdir()
        tasks = [(seed, domain, spec, job) for job in jobs]
        if workers > 1:
            # spawn, not fork: forking a process that already runs torch threads can hang.
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                encoded = list(pool.map(_render_job, tasks, chunksize=64))
        else:
            encoded = [_render_job(task) for task in tasks]
        rows = []
        for job, data in zip(jobs, encoded):
            relative = f"{SPLIT_DIRS[job.split]}/{image_name(job)}"
            (staging / relative).write_bytes(data)
            rows.append((relative, job.pid, job.cam, job.split))
        with open(staging / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "pid", "camid", "split"])
            writer.writerows(rows)
        (staging / "info.json").write_text(json.dumps(spec.info(domain, seed), indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %d images of %d + %d identities (%s domain) to %s", len(jobs), spec.train_ids, spec.test_ids,
             domain, out)
    return out
