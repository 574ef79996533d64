"""Scenes of the benchmark world: sampling a scene's ground truth and rendering it with PIL.

A :class:`Scene` is pure data (background + objects). Everything drawn from it -- the RGB image, the
COCO polygons, the ADE20K-style label map -- is a pure function of the scene, so a scene stored once
gives identical pixels every time it is rendered. Randomness enters only through the
``numpy.random.Generator`` passed to :func:`sample_scene`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = [
    "SHAPES",
    "COLORS",
    "BACKGROUND_COLORS",
    "BACKGROUND_KINDS",
    "SIZES",
    "SEG_CLASSES",
    "Obj",
    "Background",
    "Scene",
    "sample_scene",
    "render",
    "render_labels",
    "object_mask",
    "polygon",
    "bbox",
]

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (37, 99, 235),
    "yellow": (245, 215, 30),
    "purple": (147, 51, 234),
    "orange": (249, 130, 22),
}
# Low-saturation background colours, far in hue/lightness from every shape colour.
BACKGROUND_COLORS = {
    "gray": (128, 128, 128),
    "white": (238, 238, 238),
    "black": (28, 28, 28),
    "beige": (222, 205, 170),
    "brown": (112, 80, 58),
}
BACKGROUND_KINDS = ("solid", "gradient", "noise")
SIZES = ("small", "large")
# Half-extent of an object as a fraction of the image side.
_SIZE_FRACTION = {"small": 0.085, "large": 0.15}
# ADE20K-style label values: 0 = "other" (object outlines, ignored by mmseg with reduce_zero_label),
# 1..3 background kinds, 4..6 shapes.
SEG_CLASSES = tuple(f"{kind} background" for kind in BACKGROUND_KINDS) + SHAPES
_CIRCLE_VERTICES = 24


@dataclass(frozen=True)
class Obj:
    """One shape: its kind, colour, size class, centre ``(cx, cy)`` and half-extent ``h`` in pixels."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    h: float


@dataclass(frozen=True)
class Background:
    """Background: ``kind`` in :data:`BACKGROUND_KINDS`, one or two colour names, gradient direction
    (``"horizontal"``, ``"vertical"``, ``"diagonal"``; unused otherwise) and the noise texture seed."""

    kind: str
    colors: tuple[str, ...]
    direction: str = "horizontal"
    texture_seed: int = 0

    @property
    def color(self) -> str:
        return self.colors[0]


@dataclass(frozen=True)
class Scene:
    """A square image of side ``size`` with a background and non-overlapping objects."""

    size: int
    background: Background
    objects: tuple[Obj, ...]


def _sample_background(rng: np.random.Generator) -> Background:
    names = list(BACKGROUND_COLORS)
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    if kind == "gradient":
        i, j = rng.choice(len(names), size=2, replace=False)
        colors = (names[i], names[j])
    else:
        colors = (names[rng.integers(len(names))],)
    direction = ("horizontal", "vertical", "diagonal")[rng.integers(3)]
    return Background(kind=kind, colors=colors, direction=direction, texture_seed=int(rng.integers(2**31)))


def _place(rng: np.random.Generator, size: int, extents: Sequence[float], tries: int = 64):
    """Centres for objects of the given half-extents, inside the image and not overlapping (each
    object takes the first of ``tries`` uniform candidates that clears the ones placed before)."""
    radii = [h * math.sqrt(2.0) for h in extents]  # bounding circle of a square / triangle
    centres = np.zeros((0, 2))
    for k, radius in enumerate(radii):
        lo, hi = radius + 1.0, size - radius - 1.0
        if hi < lo:
            return None
        cand = np.round(rng.uniform(lo, hi, size=(tries, 2)), 1)
        if len(centres):
            dist = np.linalg.norm(cand[:, None, :] - centres[None, :, :], axis=-1)
            ok = np.all(dist > radius + np.asarray(radii[:k])[None, :] + 2.0, axis=1)
        else:
            ok = np.ones(tries, dtype=bool)
        if not ok.any():
            return None
        centres = np.vstack([centres, cand[int(np.argmax(ok))]])
    return [(float(x), float(y)) for x, y in centres]


def sample_scene(
    rng: np.random.Generator,
    size: int,
    *,
    num_objects: int | None = None,
    max_objects: int = 4,
    specs: Sequence[tuple[str | None, str | None, str | None]] = (),
    forbid: Sequence[tuple[str | None, str | None]] = (),
    background: Background | None = None,
    scale: float = 1.0,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = tuple(COLORS),
) -> Scene:
    """Sample a scene.

    Args:
        rng: the random stream (the only source of randomness).
        size: image side in pixels.
        num_objects: exact number of objects; default uniform in ``1..max_objects``.
        max_objects: upper bound when ``num_objects`` is not given.
        specs: objects that must be present, as ``(shape, color, size)`` with ``None`` = any. They come
            first; the remaining objects are random.
        forbid: ``(shape, color)`` patterns (``None`` = any) that the random filler objects must not
            match, so that a count of ``specs`` objects stays exact.
        background: fixed background; default random.
        scale: multiplies the object sizes (below 1 for crowded scenes).
        shapes: the shapes random objects are drawn from (a world profile's vocabulary).
        colors: the colours random objects are drawn from.
    """
    if num_objects is None:
        num_objects = int(rng.integers(1, max_objects + 1))
    num_objects = max(num_objects, len(specs))
    # Per-scene shape preferences make repeated shapes (and so counts > 1) common.
    shapes, colors = tuple(shapes), tuple(colors)
    shape_p = rng.dirichlet(np.full(len(shapes), 0.8))

    # Filler objects: (shape, colour) pairs outside ``forbid``, weighted by the shape preferences.
    fillers = [
        (s, c) for s in shapes for c in colors
        if not any((fs is None or fs == s) and (fc is None or fc == c) for fs, fc in forbid)
    ]
    if not fillers:
        raise ValueError(f"forbid={list(forbid)} excludes every (shape, color) pair of {shapes} x {colors}")
    filler_p = np.array([shape_p[shapes.index(s)] for s, _ in fillers]) + 1e-6
    filler_p /= filler_p.sum()

    bg = background if background is not None else _sample_background(rng)
    for _ in range(50):
        attrs = []
        for k in range(num_objects):
            if k < len(specs):
                spec = specs[k]
                shape = spec[0] or shapes[rng.choice(len(shapes), p=shape_p)]
                color = spec[1] or colors[rng.integers(len(colors))]
                size_name = spec[2] or SIZES[rng.integers(len(SIZES))]
            else:
                shape, color = fillers[rng.choice(len(fillers), p=filler_p)]
                size_name = SIZES[rng.integers(len(SIZES))]
            h = round(float(size * scale * _SIZE_FRACTION[size_name] * rng.uniform(0.9, 1.1)), 1)
            attrs.append((shape, color, size_name, h))
        centres = _place(rng, size, [a[3] for a in attrs])
        if centres is not None:
            objects = tuple(
                Obj(shape=s, color=c, size=z, cx=cx, cy=cy, h=h) for (s, c, z, h), (cx, cy) in zip(attrs, centres)
            )
            return Scene(size=size, background=bg, objects=objects)
    raise ValueError(f"could not place {num_objects} objects in a {size}x{size} image; lower max_objects")


# --- geometry ---------------------------------------------------------------------------------------
def polygon(obj: Obj) -> list[float]:
    """COCO polygon ``[x1, y1, x2, y2, ...]`` of an object (exact for squares and triangles, a
    24-gon for circles)."""
    cx, cy, h = obj.cx, obj.cy, obj.h
    if obj.shape == "square":
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif obj.shape == "triangle":
        pts = [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif obj.shape == "circle":
        pts = [
            (cx + h * math.cos(2 * math.pi * k / _CIRCLE_VERTICES), cy + h * math.sin(2 * math.pi * k / _CIRCLE_VERTICES))
            for k in range(_CIRCLE_VERTICES)
        ]
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {SHAPES}")
    return [round(v, 2) for p in pts for v in p]


def bbox(obj: Obj) -> list[float]:
    """COCO box ``[x, y, w, h]`` of an object."""
    return [round(obj.cx - obj.h, 2), round(obj.cy - obj.h, 2), round(2 * obj.h, 2), round(2 * obj.h, 2)]


def object_mask(obj: Obj, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of an object: its :func:`polygon` rasterised by pycocotools, so the
    rendered pixels, the COCO polygon and its ``annToMask`` agree exactly."""
    rle = mask_utils.frPyObjects([polygon(obj)], size, size)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


# --- rendering --------------------------------------------------------------------------------------
def _background_pixels(bg: Background, size: int) -> np.ndarray:
    base = np.asarray(BACKGROUND_COLORS[bg.color], dtype=np.float32)
    if bg.kind == "solid":
        return np.broadcast_to(base, (size, size, 3)).copy()
    if bg.kind == "gradient":
        other = np.asarray(BACKGROUND_COLORS[bg.colors[1]], dtype=np.float32)
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        if bg.direction == "horizontal":
            t = np.broadcast_to(ramp[None, :], (size, size))
        elif bg.direction == "vertical":
            t = np.broadcast_to(ramp[:, None], (size, size))
        else:
            t = (ramp[None, :] + ramp[:, None]) / 2.0
        return base * (1.0 - t[..., None]) + other * t[..., None]
    if bg.kind == "noise":
        # Smooth texture: coarse gaussian noise upsampled bilinearly, plus fine grain.
        noise_rng = np.random.default_rng(bg.texture_seed)
        coarse = noise_rng.normal(0.0, 1.0, size=(max(2, size // 8), max(2, size // 8))).astype(np.float32)
        coarse_img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        fine = noise_rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32)
        texture = 22.0 * np.asarray(coarse_img) + 6.0 * fine
        return base + texture[..., None]
    raise ValueError(f"unknown background kind {bg.kind!r}; known: {BACKGROUND_KINDS}")


def render(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    pixels = np.clip(np.rint(_background_pixels(scene.background, scene.size)), 0, 255).astype(np.uint8)
    for obj in scene.objects:
        pixels[object_mask(obj, scene.size)] = COLORS[obj.color]
    return Image.fromarray(pixels)


def render_labels(scene: Scene) -> Image.Image:
    """Single-channel (mode ``L``) label map: background kind ``1..3``, shapes ``4..6``, ``0`` on object
    outlines (the ambiguous boundary pixels, ignored under ``reduce_zero_label``)."""
    label = np.full((scene.size, scene.size), 1 + BACKGROUND_KINDS.index(scene.background.kind), dtype=np.uint8)
    for obj in scene.objects:
        mask = object_mask(obj, scene.size)
        label[mask] = 1 + len(BACKGROUND_KINDS) + SHAPES.index(obj.shape)
        label[_outline(mask)] = 0
    return Image.fromarray(label)
