"""The embedded demo world: a procedurally generated miniature of the prompt-learning benchmark.

Every image shows one coloured object (a shape, an icon, a letter glyph) or a coloured texture,
drawn in one of several *styles* (photo, sketch, clutter, neon, a re-drawn "v2"). A class is
"<colour> <object>", so class names are plain words that a CLIP text tower can read.

The world mirrors the benchmark's structure:
- `shapes` is the source dataset (the ImageNet analogue); `shapes_sketch`, `shapes_clutter`,
  `shapes_neon` and `shapes_v2` are its domain-shifted, test-only variants;
- `icons`, `glyphs` and `patterns` are target datasets with label spaces of their own.

Pretraining (`pdiff pretrain`) draws unlimited clean image-caption pairs from `render_batch`.
The downstream datasets written by `write_world` carry a colour cast that pretraining never saw,
x' = (1-a) x + a x[BGR], so a learned prompt has something to correct; labels are ordered
colour-major, so CoOp's base/new split (first half of the labels) splits the *colours*, and a
context fitted to the base colours does not transfer: the generalisation gap the paper attacks.

Rendering is vectorised in torch: object masks come from a few templates drawn once with PIL and
placed by per-sample affine `grid_sample`; textures are evaluated analytically.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from pdiff.utils import write_json

log = logging.getLogger(__name__)

# Colour order matters: the first half of the colours are the base classes of every dataset.
COLOURS: list[tuple[str, tuple[float, float, float]]] = [
    ("red", (0.90, 0.10, 0.10)),
    ("orange", (1.00, 0.55, 0.00)),
    ("yellow", (0.95, 0.90, 0.10)),
    ("green", (0.10, 0.70, 0.20)),
    ("blue", (0.10, 0.25, 0.95)),
    ("purple", (0.55, 0.15, 0.75)),
    ("pink", (1.00, 0.45, 0.70)),
    ("cyan", (0.10, 0.85, 0.90)),
]

FAMILIES: dict[str, list[str]] = {
    "shapes": ["circle", "square", "triangle", "diamond", "hexagon", "cross"],
    "icons": ["heart", "crescent", "arrow", "ring", "star", "bolt"],
    "glyphs": ["letter T", "letter L", "letter X", "letter Z", "letter E", "letter H"],
    "patterns": ["stripes", "dots", "checks", "waves", "grid", "zigzag"],
}
TEXTURE_FAMILY = "patterns"
STYLES = ["photo", "sketch", "clutter", "neon", "v2"]

# Downstream datasets: name -> (family, style, has_train).
DATASETS: dict[str, tuple[str, str, bool]] = {
    "shapes": ("shapes", "photo", True),
    "shapes_sketch": ("shapes", "sketch", False),
    "shapes_clutter": ("shapes", "clutter", False),
    "shapes_neon": ("shapes", "neon", False),
    "shapes_v2": ("shapes", "v2", False),
    "icons": ("icons", "photo", True),
    "glyphs": ("glyphs", "photo", True),
    "patterns": ("patterns", "photo", True),
}

# Pretraining style mix: neon is rare, "v2" is a re-drawn photo, seen as photos.
PRETRAIN_STYLE_P = {"photo": 0.44, "sketch": 0.2, "clutter": 0.2, "neon": 0.06, "v2": 0.1}

GENERIC_CAPTIONS = ["a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}."]
STYLE_CAPTIONS = {
    "photo": ["a photo of a {}.", "a rendering of a {}.", "a {} on a plain background."],
    "sketch": ["a sketch of a {}.", "a drawing of a {}.", "an outline of a {}."],
    "clutter": ["a cluttered photo of a {}.", "a noisy photo of a {}.", "a {} among clutter."],
    "neon": ["a neon {}.", "a glowing {}.", "a photo of a bright neon {}."],
    "v2": ["a photo of a {}.", "a small {}.", "a photo of a small {}."],
}

_TEMPLATE_PX = 64


@dataclass(frozen=True)
class WorldSpec:
    """The world's size; `colours` and `objects` take the first k of each list."""

    colours: int = 8
    objects: int = 6
    image_size: int = 32

    def classnames(self, family: str) -> list[str]:
        """Colour-major label order, so the first half of the labels are the first colours."""
        objs = FAMILIES[family][: self.objects]
        return [f"{c} {o}" for c, _ in COLOURS[: self.colours] for o in objs]


def _draw_template(name: str) -> np.ndarray:
    """A binary mask of one object, drawn large with PIL and downsampled (anti-aliased)."""
    s = 4 * _TEMPLATE_PX
    img = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(img)

    def p(x: float, y: float) -> tuple[float, float]:  # unit square [-1, 1]^2 -> pixels
        return ((x + 1) / 2 * (s - 1), (y + 1) / 2 * (s - 1))

    def poly(points: list[tuple[float, float]], fill: int = 255) -> None:
        d.polygon([p(x, y) for x, y in points], fill=fill)

    def regular(n: int, r: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
        return [
            (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)
        ]

    def disc(cx: float, cy: float, r: float, fill: int = 255) -> None:
        d.ellipse([p(cx - r, cy - r), p(cx + r, cy + r)], fill=fill)

    def stroke(segments: list[tuple[float, float, float, float]]) -> None:
        for x0, y0, x1, y1 in segments:
            d.line([p(x0, y0), p(x1, y1)], fill=255, width=int(0.34 * s / 2))

    if name == "circle":
        disc(0, 0, 0.9)
    elif name == "square":
        poly([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)])
    elif name == "triangle":
        poly(regular(3, 0.95, -math.pi / 2), 255)
    elif name == "diamond":
        poly([(0, -0.95), (0.6, 0), (0, 0.95), (-0.6, 0)])
    elif name == "hexagon":
        poly(regular(6, 0.92, 0))
    elif name == "cross":
        poly([(-0.28, -0.9), (0.28, -0.9), (0.28, 0.9), (-0.28, 0.9)])
        poly([(-0.9, -0.28), (0.9, -0.28), (0.9, 0.28), (-0.9, 0.28)])
    elif name == "heart":
        disc(-0.42, -0.3, 0.46)
        disc(0.42, -0.3, 0.46)
        poly([(-0.86, -0.15), (0.86, -0.15), (0, 0.9)])
    elif name == "crescent":
        disc(0, 0, 0.9)
        disc(0.4, -0.2, 0.72, fill=0)
    elif name == "arrow":
        poly([(-0.9, -0.22), (0.15, -0.22), (0.15, -0.6), (0.92, 0), (0.15, 0.6), (0.15, 0.22),
              (-0.9, 0.22)])
    elif name == "ring":
        disc(0, 0, 0.92)
        disc(0, 0, 0.55, fill=0)
    elif name == "star":
        outer, inner = regular(5, 0.95), regular(5, 0.4, -math.pi / 2 + math.pi / 5)
        poly([pt for pair in zip(outer, inner, strict=True) for pt in pair])
    elif name == "bolt":
        poly([(0.2, -0.95), (-0.55, 0.1), (-0.05, 0.1), (-0.25, 0.95), (0.55, -0.15),
              (0.05, -0.15)])
    elif name == "letter T":
        stroke([(-0.75, -0.75, 0.75, -0.75), (0, -0.75, 0, 0.85)])
    elif name == "letter L":
        stroke([(-0.45, -0.85, -0.45, 0.7), (-0.45, 0.7, 0.65, 0.7)])
    elif name == "letter X":
        stroke([(-0.7, -0.8, 0.7, 0.8), (0.7, -0.8, -0.7, 0.8)])
    elif name == "letter Z":
        stroke([(-0.7, -0.75, 0.7, -0.75), (0.7, -0.75, -0.7, 0.75), (-0.7, 0.75, 0.7, 0.75)])
    elif name == "letter E":
        stroke([(-0.55, -0.8, -0.55, 0.8), (-0.55, -0.75, 0.6, -0.75), (-0.55, 0, 0.4, 0),
                (-0.55, 0.75, 0.6, 0.75)])
    elif name == "letter H":
        stroke([(-0.6, -0.85, -0.6, 0.85), (0.6, -0.85, 0.6, 0.85), (-0.6, 0, 0.6, 0)])
    else:  # pragma: no cover - FAMILIES and this table are kept in sync
        raise KeyError(name)
    img = img.resize((_TEMPLATE_PX, _TEMPLATE_PX), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


@lru_cache(maxsize=1)
def _templates() -> dict[str, torch.Tensor]:
    names = [o for fam, objs in FAMILIES.items() if fam != TEXTURE_FAMILY for o in objs]
    return {n: torch.from_numpy(_draw_template(n)) for n in names}


def _texture(kind: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Analytic periodic textures in texture coordinates (one period per unit)."""
    fu, fv = u - torch.floor(u), v - torch.floor(v)
    if kind == "stripes":
        m = torch.sin(2 * math.pi * u)
    elif kind == "dots":
        m = 0.12 - ((fu - 0.5) ** 2 + (fv - 0.5) ** 2)
    elif kind == "checks":
        m = torch.sin(math.pi * u) * torch.sin(math.pi * v)
    elif kind == "waves":
        m = torch.sin(2 * math.pi * (u + 0.35 * torch.sin(2 * math.pi * v / 2)))
    elif kind == "grid":
        m = 0.14 - torch.minimum((fu - 0.5).abs(), (fv - 0.5).abs())
    elif kind == "zigzag":
        m = torch.sin(2 * math.pi * (u + 0.5 * (2 * (fv - 0.5).abs())))
    else:  # pragma: no cover
        raise KeyError(kind)
    return torch.sigmoid(m * 12.0)


def _erode(mask: torch.Tensor, k: int = 3) -> torch.Tensor:
    return -F.max_pool2d(-mask, k, stride=1, padding=k // 2)


def _blur(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def render_batch(
    family: str,
    objects: torch.Tensor,
    colours: torch.Tensor,
    styles: list[str],
    gen: torch.Generator,
    image_size: int = 32,
) -> torch.Tensor:
    """Render images [B, 3, H, W] in [0, 1] for one family; all randomness comes from `gen`."""
    b, h = len(objects), image_size
    names = FAMILIES[family]
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    style_id = torch.tensor([STYLES.index(s) for s in styles])
    is_v2 = (style_id == STYLES.index("v2")).float()

    # Pose: rotation, scale and position; "v2" is re-drawn smaller and more off-centre.
    angle = (rand(b) - 0.5) * (math.pi / 3)
    scale = 0.5 + 0.3 * rand(b)
    scale = scale * (1 - 0.35 * is_v2)
    shift = (rand(b, 2) - 0.5) * 2 * (1 - scale)[:, None] * (0.6 + 0.4 * is_v2[:, None])
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, h), indexing="ij")
    grid = torch.stack([xs, ys], -1).expand(b, h, h, 2)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    gx = grid[..., 0] - shift[:, None, None, 0]
    gy = grid[..., 1] - shift[:, None, None, 1]
    lx = (cos * gx + sin * gy) / scale[:, None, None]
    ly = (-sin * gx + cos * gy) / scale[:, None, None]

    if family == TEXTURE_FAMILY:
        period = 3.0 + 2.5 * rand(b)[:, None, None]
        phase = rand(b, 2)
        u = lx * scale[:, None, None] * period / 2 + phase[:, None, None, 0]
        v = ly * scale[:, None, None] * period / 2 + phase[:, None, None, 1]
        mask = torch.empty(b, h, h)
        for k, name in enumerate(names):
            sel = objects == k
            if sel.any():
                mask[sel] = _texture(name, u[sel], v[sel])
        mask = mask[:, None]
    else:
        tmpl = _templates()
        stack = torch.stack([tmpl[n] for n in names])[objects][:, None]  # [B,1,T,T]
        mask = F.grid_sample(stack, torch.stack([lx, ly], -1), align_corners=True,
                             padding_mode="zeros")

    rgb = torch.tensor([c for _, c in COLOURS])[colours]  # [B,3]
    rgb = (rgb + 0.08 * (rand(b, 3) - 0.5)).clamp(0, 1)[:, :, None, None]
    # Shading: a soft gradient in a random direction, as a lit surface would have.
    direction = rand(b) * 2 * math.pi
    ramp = (torch.cos(direction)[:, None, None] * grid[..., 0]
            + torch.sin(direction)[:, None, None] * grid[..., 1])[:, None]
    shade = 1 + 0.18 * ramp
    bg_tone = 0.75 + 0.2 * rand(b, 1, 1, 1)
    bg = bg_tone + 0.06 * (rand(b, 3, 1, 1) - 0.5) - 0.08 * ramp
    noise = torch.randn(b, 3, h, h, generator=gen)

    out = torch.empty(b, 3, h, h)
    for s, style in enumerate(STYLES):
        sel = style_id == s
        if not sel.any():
            continue
        m, c, sh, bgs, nz = mask[sel], rgb[sel], shade[sel], bg[sel], noise[sel]
        if style in ("photo", "v2"):
            img = bgs * (1 - m) + (c * sh).clamp(0, 1) * m + 0.03 * nz
        elif style == "sketch":
            edge = (m - _erode(m)).clamp(0, 1)
            edge = (edge * 2.0).clamp(0, 1)
            paper = 0.95 + 0.03 * (bgs - bgs.mean())
            img = paper * (1 - edge) + c * edge + 0.02 * nz
        elif style == "clutter":
            k = int(sel.sum())
            blobs = torch.zeros(k, 1, h, h)
            gsel = grid[sel]
            for _ in range(4):
                centre = (rand(k, 1, 1, 2) - 0.5) * 2
                radius = 0.1 + 0.2 * rand(k, 1, 1)
                blob = (((gsel - centre) ** 2).sum(-1) < radius**2).float()[:, None]
                blobs = torch.maximum(blobs, blob)
            grey = 0.35 + 0.3 * rand(k, 1, 1, 1)
            img = bgs * (1 - m) + (c * sh).clamp(0, 1) * m
            # Distractors sit mostly behind the object, partly over it (occlusion).
            over = blobs * (1 - m * (rand(k, 1, 1, 1) < 0.7).float())
            img = img * (1 - over) + grey * over + 0.1 * nz
        elif style == "neon":
            glow = _blur(m, 7)
            dark = 0.05 + 0.05 * rand(int(sel.sum()), 1, 1, 1)
            img = dark + c * (m + 0.6 * glow).clamp(0, 1.2) + 0.02 * nz
        out[sel] = img
    return out.clamp(0, 1)


def apply_cast(images: torch.Tensor, amount: float) -> torch.Tensor:
    """The downstream shift: a partial red<->blue channel swap that pretraining never saw."""
    return (1 - amount) * images + amount * images[:, [2, 1, 0]]


def _to_png(img: torch.Tensor, path: Path) -> None:
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path, optimize=False, compress_level=1)


def write_world(root: str | Path, params: dict) -> dict:
    """Write every downstream dataset in the CoOp layout under `root` and return the manifest.

    Layout per dataset: `<root>/<name>/images/<class_folder>/<split>_<i>.png` and
    `<root>/<name>/split_zhou_<name>.json` with paths relative to `<root>/<name>`.
    """
    root = Path(root)
    spec = WorldSpec(params.get("colours", 8), params.get("objects", 6), params["image_size"])
    counts = {
        "train": params["train_per_class"],
        "val": params["val_per_class"],
        "test": params["test_per_class"],
    }
    manifest: dict = {"world": params, "datasets": {}}
    for d_index, (name, (family, style, has_train)) in enumerate(tqdm(DATASETS.items(),
                                                                        desc="world")):
        gen = torch.Generator().manual_seed(params["seed"] * 1000 + d_index)
        classnames = spec.classnames(family)
        n_obj = spec.objects
        split_json: dict[str, list] = {}
        for split, per_class in counts.items():
            if not has_train and split != "test":
                split_json[split] = []
                continue
            labels = torch.arange(len(classnames)).repeat_interleave(per_class)
            imgs = render_batch(family, labels % n_obj, labels // n_obj, [style] * len(labels),
                                gen, spec.image_size)
            imgs = apply_cast(imgs, params["cast"])
            entries = []
            for i, (img, lab) in enumerate(zip(imgs, labels.tolist(), strict=True)):
                cname = classnames[lab]
                rel = Path("images") / cname.replace(" ", "_") / f"{split}_{i:05d}.png"
                (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
                _to_png(img, root / name / rel)
                entries.append([rel.as_posix(), lab, cname])
            split_json[split] = entries
        split_file = f"split_zhou_{name}.json"
        write_json(root / name / split_file, split_json)
        manifest["datasets"][name] = {
            "folder": name,
            "split_file": split_file,
            "family": family,
            "style": style,
            "classes": len(classnames),
            "counts": {k: len(v) for k, v in split_json.items()},
        }
        log.info("wrote %s: %d classes, %s", name, len(classnames),
                 manifest["datasets"][name]["counts"])
    return manifest


class CaptionSampler:
    """Unlimited clean (image, caption) pairs over every family and style, for pretraining."""

    def __init__(self, spec: WorldSpec, gen: torch.Generator):
        self.spec, self.gen = spec, gen
        self.families = list(FAMILIES)
        self.classes = [(f, c) for f in self.families for c in spec.classnames(f)]
        styles, p = zip(*PRETRAIN_STYLE_P.items(), strict=True)
        self.styles, self.style_p = list(styles), torch.tensor(p)

    def captions_for(self, classname: str, style: str) -> list[str]:
        return [t.format(classname) for t in GENERIC_CAPTIONS + STYLE_CAPTIONS[style]]

    def sample(self, batch: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Return images [B,3,H,W], captions, and global class ids (for multi-positive targets)."""
        g = self.gen
        fam = torch.randint(len(self.families), (batch,), generator=g)
        col = torch.randint(self.spec.colours, (batch,), generator=g)
        obj = torch.randint(self.spec.objects, (batch,), generator=g)
        sty = torch.multinomial(self.style_p, batch, replacement=True, generator=g)
        images = torch.empty(batch, 3, self.spec.image_size, self.spec.image_size)
        for f, family in enumerate(self.families):
            sel = fam == f
            if sel.any():
                images[sel] = render_batch(family, obj[sel], col[sel],
                                           [self.styles[int(s)] for s in sty[sel]], g,
                                           self.spec.image_size)
        flip = torch.rand(batch, generator=g) < 0.5
        images[flip] = images[flip].flip(-1)
        per_family = self.spec.colours * self.spec.objects
        class_ids = fam * per_family + col * self.spec.objects + obj
        captions = []
        for i in range(batch):
            family = self.families[int(fam[i])]
            cname = self.spec.classnames(family)[int(col[i]) * self.spec.objects + int(obj[i])]
            options = self.captions_for(cname, self.styles[int(sty[i])])
            captions.append(options[int(torch.randint(len(options), (1,), generator=g))])
        return images, captions, class_ids
