"""Find images (folders, file lists, CSV/Parquet of paths), read what the catalog needs of each.

Per image: a stable id, the absolute path, the sha256 of the bytes, width × height (after EXIF
orientation), mean luminance brightness in 0–1, capture time from EXIF, file size and mtime,
the quality measures of :mod:`neardup.quality` (from the thumbnail and the quantisation
tables; what the master policy reads), and a small JPEG thumbnail in ``<catalog sidecar>/thumbs/<sha[:2]>/<sha>.jpg``. Files that
cannot be read are recorded in the catalog's ``skipped`` table with a reason — never a crash.

Re-scanning is incremental: a file whose size and mtime are unchanged is not read again; a file
whose bytes changed gets its new hash (and so a new embedding); a file that vanished is marked
``status = 'missing'`` (its row and any run history stay — nothing is deleted).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from .catalog import Catalog
from .embed.base import draft_at_least, exif_orientation, to_rgb, upright
from .errors import InputError
from .paths import is_utf8, require_regular_file, shown
from .quality import MEASURES as QUALITY_MEASURES
from .quality import measure as measure_quality

#: Extensions picked up when walking a folder (lower case). Files named in a list are always tried.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".ppm",
    ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".heic", ".heif", ".avif", ".dng", ".cr2",
    ".nef", ".arw", ".orf", ".rw2",
})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet", ".pq"})

THUMB_SIZE = 256
#: Pixels above which a file is treated as a decompression bomb (Pillow's own default limit).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
STATUS_OK, STATUS_MISSING, STATUS_UNREADABLE = "ok", "missing", "unreadable"
#: Columns a scan measures from the file: a scan table's columns of these names are not used.
MEASURED_COLUMNS = ("sha256", "width", "height", "brightness", "file_size")
#: Columns a scan sets itself: a scan table may not have them (any case).
SCAN_COLUMNS = ("mtime", "status", "source", "scanned_at")
#: ``check(meta, source, first_row)``: refuses (one line) or returns the meta cast to the catalog's types.
MetaCheck = Callable[[pa.Table, str, int], pa.Table]

# Extra columns this stage keeps in ``images`` (added by upsert on first scan).
_EXTRA_COLUMNS = pa.schema([("id", pa.string()), ("mtime", pa.float64()), ("status", pa.string()),
                            ("source", pa.string()), ("scanned_at", pa.timestamp("us"))])


@dataclass
class SourceFile:
    """One file to scan: absolute path, id candidates (preferred first) and user metadata."""

    path: str
    ids: tuple[str, ...]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    explicit: bool = False       # named by the user (list/CSV/argument), not found by walking
    meta_types: dict[str, Any] = field(default_factory=dict)   # Arrow type of each meta column


@dataclass
class ImageInfo:
    """What a scan learns from one readable file."""

    path: str
    sha256: str
    width: int
    height: int
    brightness: float
    captured_at: dt.datetime | None
    file_size: int
    mtime: float
    prepared: Any = None      # the model input, when the scan was asked to prepare one
    measures: dict[str, Any] = field(default_factory=dict)  # quality measures (neardup.quality)


@dataclass
class Skip:
    """A file that could not be used, and why (one line)."""

    path: str
    reason: str


@dataclass
class ScanReport:
    """Counts from one :func:`scan` call (``skipped`` lists the paths and reasons)."""

    found: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    missing: int = 0
    restored: int = 0
    duplicates: int = 0
    skipped: list[Skip] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        parts = [f"{self.found} files found", f"{self.added} new", f"{self.changed} changed", f"{self.unchanged} unchanged"]
        if self.missing:
            parts.append(f"{self.missing} missing")
        if self.restored:
            parts.append(f"{self.restored} back")
        if self.duplicates:
            parts.append(f"{self.duplicates} byte-identical copies")
        parts.append(f"{self.n_skipped} skipped")
        return ", ".join(parts)


def thumbnail_path(sidecar: Path, sha256: str) -> Path:
    """Where the thumbnail of the image with this content hash lives (JPEG, ≤ 256 px)."""
    return Path(sidecar) / "thumbs" / sha256[:2] / f"{sha256}.jpg"


# -- finding files -----------------------------------------------------------------------------

def _walk(root: Path, exclude: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Image files under ``root``, recursively, in a stable order; hidden files/folders and the
    folders in ``exclude`` (absolute paths: the catalog's own sidecar with its thumbnails) skipped."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".duckdb.d")
                             and os.path.join(dirpath, d) not in exclude)
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / name


def _list_file(path: Path) -> list[SourceFile]:
    out = []
    base = path.parent.resolve()
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        absolute = (p if p.is_absolute() else base / p).resolve()
        out.append(SourceFile(str(absolute), (_rel_or_abs(absolute, base),), str(path), explicit=True))
    return out


def _rel_or_abs(p: Path, base: Path) -> str:
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _table_file(path: Path, check_meta: MetaCheck | None = None) -> list[SourceFile]:
    """A CSV/Parquet with a ``path`` column; an ``id`` column and other columns (e.g. score) are kept.

    ``check_meta`` sees the kept columns (with ``id``) before any row is used, so a column the
    catalog cannot take is refused before the scan writes anything.
    """
    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read table ({str(exc).splitlines()[0]})") from None
    if "path" not in table.column_names:
        raise InputError(f"{path}: no 'path' column (columns: {', '.join(table.column_names)})")
    base = path.parent.resolve()
    first = 2 if path.suffix.lower() == ".csv" else 1
    meta_types: dict[str, Any] = {}
    if check_meta is not None:
        kept = table.select([c for c in table.column_names if c != "path" and c not in MEASURED_COLUMNS])
        kept = check_meta(kept, str(path), first)
        for c in kept.column_names:
            if c != "id":
                table = table.set_column(table.column_names.index(c), c, kept[c])
        meta_types = {f.name: f.type for f in kept.schema if f.name != "id"}
    rows = table.to_pylist()
    ids_seen: set[str] = set()
    out = []
    for n, row in enumerate(rows, first):
        raw = row.pop("path")
        if raw is None or str(raw).strip() == "":
            raise InputError(f"{path}: row {n} has an empty path")
        p = Path(str(raw)).expanduser()
        absolute = (p if p.is_absolute() else base / p).resolve()
        given = row.pop("id", None)
        if given is not None:
            given = str(given)
            if given in ids_seen:
                raise InputError(f"{path}: row {n}: duplicate id {given!r}")
            ids_seen.add(given)
        ids = (given,) if given is not None else (_rel_or_abs(absolute, base),)
        meta = {k: v for k, v in row.items() if k not in MEASURED_COLUMNS}
        out.append(SourceFile(str(absolute), ids, str(path), meta=meta, explicit=True, meta_types=meta_types))
    return out


def check_sources(sources: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse at once, in one line, a source that does not exist or is neither a folder nor a regular file."""
    for src in sources:
        p = Path(src).expanduser()
        if not p.exists():
            raise InputError(f"{shown(src)}: no such file or folder")
        if not p.is_dir():
            require_regular_file(p, "list" if p.suffix.lower() in LIST_EXTENSIONS | TABLE_EXTENSIONS else "file")


def collect(sources: Sequence[str | os.PathLike[str]], exclude: Sequence[str | os.PathLike[str]] = (),
            check_meta: MetaCheck | None = None) -> tuple[list[SourceFile], list[str]]:
    """Expand sources into files. Returns ``(files, folders walked)`` (absolute folder paths).

    A folder is walked recursively (image extensions only); a ``.txt``/``.lst`` is a list of
    paths (one per line, relative to the list's folder); a ``.csv``/``.parquet`` needs a
    ``path`` column; any other file is scanned as an image. A source that is neither a folder
    nor a regular file (a named pipe, a device) is refused at once; ``check_meta`` vets the
    extra columns of each table (see :func:`_table_file`).
    """
    files: list[SourceFile] = []
    roots: list[str] = []
    skip_dirs = frozenset(str(Path(e).resolve()) for e in exclude)
    check_sources(sources)
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            root = p.resolve()
            roots.append(str(root))
            for f in _walk(root, skip_dirs):
                rel = f.relative_to(root).as_posix()
                files.append(SourceFile(str(f), (rel, f"{root.name}/{rel}", f.as_posix()), str(root)))
        elif p.suffix.lower() in LIST_EXTENSIONS:
            files.extend(_list_file(p))
        elif p.suffix.lower() in TABLE_EXTENSIONS:
            files.extend(_table_file(p, check_meta))
        else:
            a = p.resolve()
            files.append(SourceFile(str(a), (a.name, a.as_posix()), str(a.parent), explicit=True))
    # the same file named twice: keep the first mention
    seen: set[str] = set()
    unique = []
    for f in files:
        if f.path not in seen:
            seen.add(f.path)
            unique.append(f)
    return unique, roots


# -- reading one image -------------------------------------------------------------------------

def _exif_time(im: Image.Image) -> dt.datetime | None:
    """Capture time from EXIF: DateTimeOriginal (0x9003) plus SubSecTimeOriginal (0x9291); else None.

    Only the moment the picture was taken: not DateTime (0x0132, when software last changed the
    file, so an edited copy would move away from its original) and never the file's mtime.
    JPEG, PNG (eXIf chunk), TIFF and WebP carry it the same way.
    """
    try:
        ifd = im.getexif().get_ifd(0x8769)
        raw, sub = ifd.get(36867), ifd.get(37521)
    except Exception:
        return None
    return parse_exif_time(raw, sub)


def parse_exif_time(raw: object, subsec: object = None) -> dt.datetime | None:
    """``"2021:07:14 09:30:05"`` (+ sub-second digits ``"25"`` = 0.25 s) -> a datetime; None if absent or malformed."""
    if not raw:
        return None
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        when = dt.datetime.strptime(text.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if subsec:
        digits = "".join(c for c in (subsec.decode("ascii", "replace") if isinstance(subsec, bytes) else str(subsec))
                         if c.isdigit())[:6]
        if digits:
            when = when.replace(microsecond=int(digits.ljust(6, "0")))
    return when


def _classify(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb: {msg}"
    if isinstance(exc, UnidentifiedImageError):
        return "unsupported format or not an image"
    if "truncat" in msg.lower():
        return f"truncated: {msg}"
    if isinstance(exc, MemoryError):
        return "too large to decode (out of memory)"
    return f"corrupt: {msg}"


def make_thumbnail(im: Image.Image, size: int = THUMB_SIZE) -> Image.Image:
    """A new image ≤ ``size`` px on the long side (``im`` itself when it is that small already).

    Mostly a box-filter reduction by the integer factor that first gets under ``size`` (Pillow's
    ``reduce``: ~0.2 ms for a 512×384 image against ~1.3 ms for a bilinear ``thumbnail``), so
    the long side lands in (size/2, size]; only where that would lose more than a quarter of
    ``size`` (small images, where resampling is cheap anyway) a bilinear resize to exactly
    ``size`` instead.
    """
    w, h = im.size
    if max(w, h) <= size:
        return im
    t = im.reduce(-(-max(w, h) // size))
    if 4 * max(t.size) >= 3 * size:
        return t
    t = im.copy()
    t.thumbnail((size, size), Image.BILINEAR)
    return t


def inspect_image(path: str, *, thumbs_dir: Path | None = None, thumb_size: int = THUMB_SIZE,
                  max_pixels: int = MAX_PIXELS, prepare: Callable[[Image.Image], Any] | None = None,
                  decode_size: int | None = None) -> ImageInfo | Skip:
    """Hash, decode (EXIF-upright, any mode), measure and thumbnail one file; a :class:`Skip` if unusable.

    With ``prepare`` (a model's :meth:`~neardup.embed.EmbeddingModel.prepare`) the same decode
    also yields the model input (``ImageInfo.prepared``), decoded at ≥ ``decode_size`` — so
    ``find`` reads and decodes each file once, not once to scan and again to embed.
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return Skip(path, "is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):  # a pipe or device would block or never end: never opened
            return Skip(path, "not a regular file (a named pipe, device or socket)")
        if st.st_size == 0:
            return Skip(path, "empty file (0 bytes)")
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Skip(path, "not found")
    except IsADirectoryError:
        return Skip(path, "is a folder, not a file")
    except OSError as exc:
        return Skip(path, f"cannot read: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            return Skip(path, f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the {max_pixels}-pixel limit")
        orientation = exif_orientation(im)
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        captured = _exif_time(im)
        draft_at_least(im, max(thumb_size, decode_size or 0))
        im.load()                                    # full decode: truncated/corrupt data fails here
        if captured is None and (im.format or "").upper() == "PNG":
            captured = _exif_time(im)                # a PNG's eXIf chunk may follow the pixels
        rgb = to_rgb(upright(im, orientation))
        prepared = prepare(rgb) if prepare is not None else None
        thumb = make_thumbnail(rgb, thumb_size)
        lum = np.asarray(thumb.convert("L"))
        brightness = float(lum.mean() / 255.0) if lum.size else 0.0
        measures = measure_quality(thumb, lum, im)
        if thumbs_dir is not None:
            tp = Path(thumbs_dir) / sha[:2] / f"{sha}.jpg"
            if not tp.exists():
                tp.parent.mkdir(parents=True, exist_ok=True)
                tmp = tp.with_name(f".{tp.name}.{os.getpid()}.{id(thumb)}.tmp")
                thumb.save(tmp, "JPEG", quality=85)
                os.replace(tmp, tp)
    except (Exception, MemoryError) as exc:  # any decoder failure is a skip, never a crash
        return Skip(path, _classify(exc))
    return ImageInfo(path, sha, int(w), int(h), brightness, captured, int(st.st_size), float(st.st_mtime), prepared,
                     measures)


# -- the scan ----------------------------------------------------------------------------------

def _ensure_columns(cat: Catalog) -> None:
    have = cat.image_columns()
    if any(f.name not in have for f in _EXTRA_COLUMNS):
        cat.upsert_images(_EXTRA_COLUMNS.empty_table())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _record_skips(cat: Catalog, skips: list[Skip], ok_paths: list[str]) -> None:
    with cat.transaction() as con:
        if ok_paths:
            with cat.registered("_okp", pa.table({"path": pa.array(ok_paths, pa.string())})):
                con.execute("DELETE FROM skipped WHERE path IN (SELECT path FROM _okp)")
        if skips:
            now = _now()
            t = pa.table({"path": [s.path for s in skips], "reason": [s.reason for s in skips],
                          "seen_at": pa.array([now] * len(skips), pa.timestamp("us"))})
            with cat.registered("_sk", t):
                con.execute("INSERT OR REPLACE INTO skipped SELECT path, reason, seen_at FROM _sk")
            cat.describe("listed {n} unusable file(s) in `neardup skipped`", len(skips))


def scan(catalog: Catalog, sources: Sequence[str | os.PathLike[str]], *, workers: int | None = None,
         thumb_size: int = THUMB_SIZE, max_pixels: int = MAX_PIXELS, chunk_size: int = 512,
         progress: Callable[[int, int], None] | None = None,
         prepare: Callable[[Image.Image], Any] | None = None, decode_size: int | None = None,
         on_chunk: Callable[[list[tuple[str, ImageInfo]]], None] | None = None,
         write_every: int | None = None, on_write: Callable[[], None] | None = None) -> ScanReport:
    """Add the images in ``sources`` to the catalog (incremental; see the module docstring).

    ``progress(done, total)`` is called as files are processed. Decoding runs in a thread pool
    of ``workers`` (default: CPU count), one chunk ahead of the catalog writes. Raises
    :class:`InputError` only for a bad *source* (missing folder, table without a path column);
    bad *files* are skipped and reported.

    Rows are written once at least ``write_every`` (default ``chunk_size``) files are pending,
    and after the last chunk; Ctrl-C keeps every write that finished.

    ``prepare``/``decode_size``/``on_chunk`` let a caller embed during the scan: each chunk's
    readable files, as ``(id, ImageInfo)`` with ``prepared`` set, go to ``on_chunk`` on the
    calling thread while the pool decodes the next chunk. Their rows may not be written yet:
    ``on_write()`` is called after each write, when every file handed to ``on_chunk`` so far
    has its row (the place to commit anything that refers to those rows). With ``on_chunk`` the
    first chunks are smaller (2 × workers, doubling up to ``chunk_size``), so the caller's model
    starts after a few decodes instead of a whole chunk.
    """
    def check_meta(meta: pa.Table, source: str, first_row: int) -> pa.Table:
        return catalog.check_images(meta, source=source, first_row=first_row, reserved=SCAN_COLUMNS)

    catalog.require_sidecar()
    files, roots = collect(sources, exclude=[catalog.sidecar], check_meta=check_meta)
    _ensure_columns(catalog)
    report = ScanReport(found=len(files))
    # A name that is not UTF-8 cannot be stored (nor shown) as it is: skipped with its reason.
    bad_names = [Skip(shown(f.path), "file name is not valid UTF-8: rename the file to include it")
                 for f in files if not is_utf8(f.path)]
    if bad_names:
        files = [f for f in files if is_utf8(f.path)]
        _record_skips(catalog, bad_names, [])
        report.skipped.extend(bad_names)
    meta_types: dict[str, Any] = {}
    for f in files:
        meta_types.update(f.meta_types)
    existing = catalog.sql("SELECT id, path, sha256, file_size, mtime, status, sharpness IS NOT NULL AS measured "
                           "FROM images WHERE path IS NOT NULL").to_pylist()
    by_path = {r["path"]: r for r in existing}
    taken_ids = set(catalog.sql("SELECT id FROM images").column(0).to_pylist())
    known_shas = {r["sha256"] for r in existing if r["sha256"] and r["status"] == STATUS_OK}

    # decide ids and what needs reading
    todo: list[tuple[SourceFile, str]] = []
    unchanged_paths: list[str] = []
    for f in files:
        old = by_path.get(f.path)
        if old is not None:
            fid = old["id"]
            try:
                st = os.stat(f.path)
                same = (old["status"] == STATUS_OK and old["file_size"] == st.st_size
                        and old["mtime"] is not None and abs(old["mtime"] - st.st_mtime) < 1e-6
                        and old["measured"])   # scanned before the quality measures: read once more
            except OSError:
                same = False
            if same and not f.meta:
                unchanged_paths.append(f.path)
                report.unchanged += 1
                continue
        else:
            fid = next((c for c in f.ids if c not in taken_ids), None)
            if fid is None:
                fid = f.path if f.path not in taken_ids else f"{f.path}#{len(taken_ids)}"
            taken_ids.add(fid)
        todo.append((f, fid))

    thumbs = catalog.sidecar / "thumbs"
    nworkers = workers or os.cpu_count() or 1
    done = report.unchanged
    total = len(files)
    if progress:
        progress(done, total)
    seen_paths: set[str] = set(unchanged_paths)
    chunks = _split(todo, chunk_size, first=min(chunk_size, 2 * nworkers) if on_chunk is not None else chunk_size)
    write_every = max(1, write_every or chunk_size)
    pool = ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="neardup-scan")
    rows: list[dict[str, Any]] = []
    skips: list[Skip] = []
    ok_paths: list[str] = []

    def submit(chunk: list[tuple[SourceFile, str]]) -> list[Any]:
        return [pool.submit(inspect_image, f.path, thumbs_dir=thumbs, thumb_size=thumb_size, max_pixels=max_pixels,
                            prepare=prepare, decode_size=decode_size) for f, _ in chunk]

    def write() -> None:
        if rows:
            _upsert_rows(catalog, rows, meta_types)
        if skips or ok_paths:
            _record_skips(catalog, skips, ok_paths)
        report.skipped.extend(skips)
        rows.clear(), skips.clear(), ok_paths.clear()
        if on_write is not None:
            on_write()

    try:
        ahead = submit(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            results = [fut.result() for fut in ahead]
            ahead = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
            ok_items: list[tuple[str, ImageInfo]] = []
            now = _now()
            for (f, fid), res in zip(chunk, results):
                old = by_path.get(f.path)
                if isinstance(res, Skip):
                    skips.append(res)
                    if old is not None:   # it was readable before: keep the row, mark it
                        rows.append(dict(id=fid, status=STATUS_MISSING if res.reason == "not found" else STATUS_UNREADABLE,
                                         scanned_at=now))
                    continue
                seen_paths.add(f.path)
                ok_paths.append(f.path)
                ok_items.append((fid, res))
                if old is None:
                    report.added += 1
                elif old["sha256"] != res.sha256:
                    report.changed += 1
                elif old["status"] != STATUS_OK:
                    report.restored += 1
                else:
                    report.unchanged += 1
                if res.sha256 in known_shas:
                    report.duplicates += 1
                known_shas.add(res.sha256)
                row = dict(id=fid, path=f.path, sha256=res.sha256, width=res.width, height=res.height,
                           brightness=res.brightness, captured_at=res.captured_at, file_size=res.file_size,
                           mtime=res.mtime, status=STATUS_OK, source=f.source, scanned_at=now, **res.measures)
                row.update(f.meta)
                rows.append(row)
            if len(rows) + len(skips) >= write_every or k == len(chunks) - 1:
                write()
            if on_chunk is not None and ok_items:
                on_chunk(ok_items)
            del results, ok_items
            done += len(chunk)
            if progress:
                progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    # vanished: rows under a walked folder (or named explicitly) that we did not see now
    named = {f.path for f in files if f.explicit}
    gone = []
    for r in existing:
        p = r["path"]
        if r["status"] == STATUS_MISSING or p in seen_paths:
            continue
        under_root = any(p.startswith(root.rstrip("/") + "/") for root in roots)
        if (under_root and not os.path.exists(p)) or (p in named and not os.path.exists(p)):
            gone.append(r["id"])
    if gone:
        catalog.upsert_images(pa.table({"id": pa.array(gone, pa.string()),
                                        "status": pa.array([STATUS_MISSING] * len(gone), pa.string())}))
    # files that went missing from a list count once (not also as "skipped: not found" rows already marked)
    report.missing = len(gone) + sum(1 for s in report.skipped if s.reason == "not found" and s.path in by_path)
    return report


def _split(items: list[Any], size: int, first: int) -> list[list[Any]]:
    """``items`` in chunks of ``size``, the first ones smaller: ``first``, then doubling up to ``size``."""
    out, i, n = [], 0, max(1, min(first, size))
    while i < len(items):
        out.append(items[i:i + n])
        i += n
        n = min(size, 2 * n)
    return out


def _upsert_rows(cat: Catalog, rows: list[dict[str, Any]], meta_types: dict[str, Any] | None = None) -> None:
    """Upsert rows with possibly different key sets: one upsert per distinct set of columns.

    ``meta_types`` gives the Arrow type of user columns (from their table), so a chunk whose
    values are all empty still writes the column's type.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r), []).append(r)
    types = {"id": pa.string(), "path": pa.string(), "sha256": pa.string(), "width": pa.int32(), "height": pa.int32(),
             "brightness": pa.float64(), "captured_at": pa.timestamp("us"), "file_size": pa.int64(),
             "mtime": pa.float64(), "status": pa.string(), "source": pa.string(), "scanned_at": pa.timestamp("us"),
             **{m: pa.float64() for m in QUALITY_MEASURES}}
    types = {**(meta_types or {}), **types}
    for cols, rs in groups.items():
        arrays = {}
        for c in cols:
            vals = [r[c] for r in rs]
            arrays[c] = pa.array(vals, types[c]) if c in types else pa.array(vals)
        cat.upsert_images(pa.table(arrays))


def iter_image_paths(sources: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Absolute paths of the image files the sources name (no reading, no catalog)."""
    files, _ = collect(list(sources))
    return [f.path for f in files]
