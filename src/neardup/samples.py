"""A labelled sample collection built from scikit-image's bundled photos plus edited copies.

Used by ``neardup demo``, the tests and ``bench/quality.py``. Everything comes from the
installed ``scikit-image`` package (its bundled sample photos — public-domain/CC0 images such as
NASA's astronaut and the coffee, cat and rocket photos), so no network is needed. Given a
seed the output is the same file for file.

Each original gets edited copies — JPEG re-compression, resize, brightness, horizontal flip,
small crop, small rotation, a text overlay — and some get a "burst": frames of a slowly
panning window with exposure jitter, like a camera firing every few seconds. Every file's
ground-truth group (its source photo) is written to ``labels.csv``.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

#: Photos used whole (scikit-image names). ``cat`` is the same picture as ``chelsea``: left out.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "immunohistochemistry", "moon",
          "clock", "page", "text", "brick", "grass", "gravel", "cell", "stereo_motorcycle")
#: Large photos cut into non-overlapping tiles, each tile a distinct original (benchmark only).
TILED = ("hubble_deep_field", "retina")
#: Photos that get burst frames in the demo.
BURST = ("astronaut", "coffee", "rocket")

EDITS: dict[str, str] = {
    "jpeg": "JPEG re-compression at quality 30-50",
    "resize": "downscaled to 40-70%",
    "bright": "brightness ×1.25-1.45 or ×0.6-0.75",
    "flip": "horizontal flip",
    "crop": "crop of 4-10% off the edges",
    "rotate": "rotation by 2-5 degrees",
    "text": "a caption drawn over the lower part",
}


@dataclass(frozen=True)
class SampleFile:
    """One file of a sample collection and its ground truth."""

    path: Path
    group: str     # the source photo: files with the same group are near-duplicates
    kind: str      # "original", an edit name, "burst-<k>", "copy" (byte-identical) or "broken"


def load_photo(name: str) -> Image.Image:
    """A scikit-image sample photo as 8-bit RGB."""
    from skimage import data

    a = getattr(data, name)()
    if isinstance(a, tuple):
        a = a[0]
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    return im.convert("RGB")


def originals(*, tiles: bool = False) -> dict[str, Image.Image]:
    """The distinct source photos; with ``tiles`` also non-overlapping tiles of the large ones."""
    out = {n: load_photo(n) for n in PHOTOS}
    if tiles:
        for n in TILED:
            im = load_photo(n)
            w, h = im.size
            # retina has a black border: keep its central part
            box = (int(w * .2), int(h * .2), int(w * .8), int(h * .8)) if n == "retina" else (0, 0, w, h)
            im = im.crop(box)
            w, h = im.size
            k = 3
            tw, th = w // k, h // k
            for i in range(k):
                for j in range(k):
                    out[f"{n}_t{i}{j}"] = im.crop((j * tw, i * th, (j + 1) * tw, (i + 1) * th))
    return out


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def apply_edit(im: Image.Image, edit: str, rng: np.random.Generator) -> Image.Image:
    """One edit from :data:`EDITS`, with parameters drawn from ``rng``."""
    w, h = im.size
    if edit == "jpeg":
        return _jpeg(im, int(rng.integers(30, 51)))
    if edit == "resize":
        s = float(rng.uniform(0.4, 0.7))
        return im.resize((max(16, round(w * s)), max(16, round(h * s))), Image.LANCZOS)
    if edit == "bright":
        f = float(rng.uniform(1.25, 1.45)) if rng.random() < 0.5 else float(rng.uniform(0.6, 0.75))
        return ImageEnhance.Brightness(im).enhance(f)
    if edit == "flip":
        return ImageOps.mirror(im)
    if edit == "crop":
        f = float(rng.uniform(0.04, 0.10))
        l, t = rng.uniform(0, f, size=2)
        return im.crop((round(w * l), round(h * t), round(w * (1 - (f - l))), round(h * (1 - (f - t)))))
    if edit == "rotate":
        deg = float(rng.uniform(2, 5)) * (1 if rng.random() < 0.5 else -1)
        return im.rotate(deg, resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0))
    if edit == "text":
        out = im.copy()
        d = ImageDraw.Draw(out)
        size = max(12, h // 12)
        words = ["holiday 2024", "DRAFT", "© neardup", "IMG_0042", "best shot"]
        d.text((w * 0.05, h * 0.78), str(words[int(rng.integers(len(words)))]), fill=(255, 255, 0), font=_font(size),
               stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
        return out
    raise ValueError(f"unknown edit {edit!r}")


#: Degraded copies for the master benchmark and tests (issue 11): what a copy of a photo loses.
DEGRADATIONS: dict[str, str] = {
    "jpeg20": "re-compressed as JPEG quality 20",
    "downscale": "downscaled to 40-70%",
    "crop": "crop of 4-10% off the edges",
    "blur": "Gaussian blur, radius 0.4% of the long side (2 px at 512)",
    "grey": "greyscale (left out where the original is greyscale already)",
    "caption": "a caption drawn over the lower part",
    "pad": "a uniform white or black border of 4-10% of each side",
    "bright": "brightness x1.25-1.45 or x0.6-0.75",
    "flip": "horizontal flip (same quality: counts as the original)",
    "rotate": "rotation by 2-5 degrees, corners filled black",
}


def degrade(im: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One degradation from :data:`DEGRADATIONS` of ``im``, with parameters drawn from ``rng``."""
    from PIL import ImageFilter

    w, h = im.size
    if kind == "jpeg20":
        return _jpeg(im, 20)
    if kind == "downscale":
        return apply_edit(im, "resize", rng)
    if kind == "crop":
        return apply_edit(im, "crop", rng)
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur(radius=0.004 * max(w, h)))
    if kind == "grey":
        return im.convert("L").convert("RGB")
    if kind == "caption":
        return apply_edit(im, "text", rng)
    if kind == "pad":
        f = float(rng.uniform(0.04, 0.10))
        bw, bh = round(w * f), round(h * f)
        colour = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
        out = Image.new("RGB", (w + 2 * bw, h + 2 * bh), colour)
        out.paste(im, (bw, bh))
        return out
    if kind == "bright":
        return apply_edit(im, "bright", rng)
    if kind == "flip":
        return ImageOps.mirror(im)
    if kind == "rotate":
        return apply_edit(im, "rotate", rng)
    raise ValueError(f"unknown degradation {kind!r}")


def is_greyscale(im: Image.Image, tol: int = 2) -> bool:
    """True when every pixel's R, G and B are within ``tol`` of each other."""
    a = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool((a.max(axis=2) - a.min(axis=2)).max() <= tol)


def build_degraded(folder: str | os.PathLike[str], *, seed: int = 0, draws: int = 1, tiles: bool = True,
                   original_quality: int = 95, copy_quality: tuple[int, int] = (95, 95),
                   kinds: Sequence[str] = tuple(DEGRADATIONS),
                   photos: Sequence[str] | None = None) -> list[SampleFile]:
    """Families of one original and its degraded copies, for judging which copy a policy keeps.

    Each original is written as JPEG ``original_quality`` (a camera's "fine" setting); each copy
    is the degradation of the *decoded original* (as an editor would open it) saved as JPEG at a
    quality drawn from ``copy_quality`` (inclusive; ``jpeg20`` is saved at 20, ``flip`` at the
    original's quality). ``draws`` independent families per photo, group ``<photo>#<k>``.
    Layout ``<photo>#<k>/original.jpg`` and ``<photo>#<k>/<kind>.jpg``; labels in ``labels.csv``.
    """
    root = Path(folder)
    rng = np.random.default_rng(seed)
    srcs = originals(tiles=tiles)
    if photos is not None:
        srcs = {k: v for k, v in srcs.items() if k in photos}
    out: list[SampleFile] = []
    for name, im in srcs.items():
        grey = is_greyscale(im)
        for k in range(draws):
            group = f"{name}#{k}"
            d = root / group
            d.mkdir(parents=True, exist_ok=True)
            p = d / "original.jpg"
            im.save(p, "JPEG", quality=original_quality)
            out.append(SampleFile(p, group, "original"))
            decoded = Image.open(p).convert("RGB")
            for kind in kinds:
                if kind == "grey" and grey:
                    continue
                q = 20 if kind == "jpeg20" else original_quality if kind == "flip" else \
                    int(rng.integers(copy_quality[0], copy_quality[1] + 1))
                ed = degrade(decoded, kind, rng)
                ep = d / f"{kind}.jpg"
                ed.save(ep, "JPEG", quality=q)
                out.append(SampleFile(ep, group, kind))
    write_labels(root / "labels.csv", out, root)
    return out


def burst_frames(im: Image.Image, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """``n`` frames of a window (88% of the photo) panning ~1.5% per frame, with exposure jitter."""
    w, h = im.size
    cw, ch = int(w * 0.88), int(h * 0.88)
    step = max(1, int(w * 0.015))
    frames = []
    for k in range(n):
        x = min(w - cw, k * step)
        y = (h - ch) // 2
        f = im.crop((x, y, x + cw, y + ch))
        f = ImageEnhance.Brightness(f).enhance(float(rng.uniform(0.96, 1.04)))
        a = np.asarray(f, dtype=np.int16) + rng.normal(0, 2.0, size=(ch, cw, 3)).astype(np.int16)
        frames.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return frames


def build_collection(folder: str | os.PathLike[str], *, seed: int = 0, edits: Sequence[str] = tuple(EDITS),
                     burst: Sequence[str] = BURST, burst_frames_n: int = 6, tiles: bool = False,
                     photos: Sequence[str] | None = None, extras: bool = True, copies: int = 1,
                     progress: Callable[[int, int], None] | None = None) -> list[SampleFile]:
    """Write the sample collection into ``folder`` (created) and return its files with labels.

    Layout: ``originals/<name>.jpg``, ``edits/<name>__<edit>.jpg``, ``burst/<name>/frame_<k>.jpg``.
    ``extras`` adds a byte-identical copy, an EXIF-rotated copy and a truncated file (which a scan
    must skip); ``copies`` > 1 makes that many independently drawn copies of every edit
    (``<name>__<edit>_<k>.jpg`` for k ≥ 1). Existing files are overwritten, nothing else in
    ``folder`` is touched.
    """
    root = Path(folder)
    rng = np.random.default_rng(seed)
    srcs = originals(tiles=tiles)
    if photos is not None:
        srcs = {k: v for k, v in srcs.items() if k in photos or k.split("_t")[0] in photos}
    out: list[SampleFile] = []
    for sub in ("originals", "edits", "burst"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    total = len(srcs) * (1 + len(edits) * copies) + len([b for b in burst if b in srcs]) * burst_frames_n
    done = 0
    for name, im in srcs.items():
        p = root / "originals" / f"{name}.jpg"
        im.save(p, "JPEG", quality=92)
        out.append(SampleFile(p, name, "original"))
        for k in range(copies):
            for e in edits:
                ed = apply_edit(im, e, rng)
                q = 95 if e != "jpeg" else 100   # the jpeg edit already carries its loss
                ep = root / "edits" / (f"{name}__{e}.jpg" if k == 0 else f"{name}__{e}_{k}.jpg")
                ed.save(ep, "JPEG", quality=q)
                out.append(SampleFile(ep, name, e))
        done += 1 + len(edits) * copies
        if progress:
            progress(done, total)
    for name in burst:
        if name not in srcs:
            continue
        d = root / "burst" / name
        d.mkdir(parents=True, exist_ok=True)
        for k, fr in enumerate(burst_frames(srcs[name], burst_frames_n, rng)):
            fp = d / f"frame_{k:02d}.jpg"
            fr.save(fp, "JPEG", quality=90)
            out.append(SampleFile(fp, name, f"burst-{k}"))
        done += burst_frames_n
        if progress:
            progress(done, total)
    if extras and srcs:
        first = next(iter(srcs))
        src = root / "originals" / f"{first}.jpg"
        (root / "extras").mkdir(exist_ok=True)
        cp = root / "extras" / f"{first}_copy.jpg"
        cp.write_bytes(src.read_bytes())
        out.append(SampleFile(cp, first, "copy"))
        rp = root / "extras" / f"{first}_exif_rotated.jpg"
        save_exif_rotated(srcs[first], rp)
        out.append(SampleFile(rp, first, "exif-rotated"))
        bp = root / "extras" / "broken.jpg"
        data = src.read_bytes()
        bp.write_bytes(data[: len(data) // 3])
        out.append(SampleFile(bp, "", "broken"))
    write_labels(root / "labels.csv", out, root)
    return out


def save_exif_rotated(im: Image.Image, path: str | os.PathLike[str], orientation: int = 6) -> None:
    """Save ``im`` as a JPEG whose stored pixels are rotated, with an EXIF tag that turns them upright.

    Orientation 6 means "rotate 90° clockwise to display", so we store the picture turned 90°
    counter-clockwise; a viewer (and neardup) that honours the tag shows the upright photo.
    """
    stored = {3: im.transpose(Image.ROTATE_180), 6: im.transpose(Image.ROTATE_90),
              8: im.transpose(Image.ROTATE_270)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())


def write_labels(path: Path, files: Sequence[SampleFile], root: Path) -> None:
    """``labels.csv``: relative path, group, kind — the ground truth for benchmarks."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "group", "kind"])
        for f in files:
            w.writerow([f.path.relative_to(root).as_posix(), f.group, f.kind])


def read_labels(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a ``labels.csv`` written by :func:`build_collection`."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
