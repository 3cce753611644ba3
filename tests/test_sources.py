"""Scanning: real photos (scikit-image) and files made here, every bad file kind, re-scans."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neardup.catalog import Catalog
from neardup.errors import InputError
from neardup.samples import load_photo, save_exif_rotated
from neardup.sources import STATUS_MISSING, STATUS_OK, inspect_image, scan, thumbnail_path


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return load_photo("astronaut")


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return load_photo("coffee")


@pytest.fixture()
def cat(tmp_path: Path) -> Catalog:
    c = Catalog(tmp_path / "cat.duckdb")
    yield c
    c.close()


def _rows(cat: Catalog) -> dict[str, dict]:
    return {r["id"]: r for r in cat.images().to_pylist()}


def test_scan_records_hash_size_brightness_and_thumbnail(tmp_path: Path, cat: Catalog, astronaut, coffee) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    astronaut.save(photos / "a.png")
    coffee.save(photos / "sub" / "c.jpg", quality=90)
    (photos / "notes.txt").write_text("not an image")      # not an image extension: ignored by a folder walk
    rep = scan(cat, [photos])
    assert (rep.found, rep.added, rep.n_skipped) == (2, 2, 0)
    rows = _rows(cat)
    assert set(rows) == {"a.png", "sub/c.jpg"}
    a = rows["a.png"]
    data = (photos / "a.png").read_bytes()
    assert a["sha256"] == hashlib.sha256(data).hexdigest()
    assert a["path"] == str((photos / "a.png").resolve())
    assert (a["width"], a["height"]) == (512, 512)
    assert a["file_size"] == len(data)
    # brightness: mean luminance (ITU-R 601) of the full image, independently computed
    rgb = np.asarray(astronaut, dtype=np.float64)
    expect = (rgb @ np.array([0.299, 0.587, 0.114])).mean() / 255
    assert a["brightness"] == pytest.approx(expect, abs=0.01)
    c = rows["sub/c.jpg"]
    assert (c["width"], c["height"]) == (600, 400)
    assert a["status"] == c["status"] == STATUS_OK
    thumb = thumbnail_path(cat.sidecar, a["sha256"])
    with Image.open(thumb) as t:
        assert max(t.size) == 256 and t.format == "JPEG"


def test_exif_orientation_and_capture_time(tmp_path: Path, cat: Catalog, coffee) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    save_exif_rotated(coffee, photos / "rot.jpg", orientation=6)
    with Image.open(photos / "rot.jpg") as im:      # stored sideways
        assert im.size == (400, 600)
    exif = Image.Exif()
    exif[0x0112] = 1
    exif.get_ifd(0x8769)[36867] = "2021:07:14 09:30:05"
    coffee.save(photos / "dated.jpg", exif=exif.tobytes())
    scan(cat, [photos])
    rows = _rows(cat)
    assert (rows["rot.jpg"]["width"], rows["rot.jpg"]["height"]) == (600, 400)   # upright
    assert str(rows["dated.jpg"]["captured_at"]) == "2021-07-14 09:30:05"
    assert rows["rot.jpg"]["captured_at"] is None
    # the thumbnail is upright too: it matches a thumbnail of the upright photo, not the sideways one
    with Image.open(thumbnail_path(cat.sidecar, rows["rot.jpg"]["sha256"])) as t:
        thumb = np.asarray(t.convert("L"), dtype=np.float64)
    ref = np.asarray(coffee.convert("L").resize(t.size), dtype=np.float64)
    assert thumb.shape == ref.shape
    assert np.abs(thumb - ref).mean() < 12


def _bad_files(d: Path, good: Image.Image) -> dict[str, str]:
    """Write one file of every bad kind; return name -> expected reason prefix."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.jpg").write_bytes(b"")
    good.save(d / "whole.jpg", quality=90)
    data = (d / "whole.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good.save(d / "whole.png")
    png = (d / "whole.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    os.remove(d / "whole.png")
    os.remove(d / "whole.jpg")
    rng = np.random.default_rng(0)
    (d / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(5000))        # JPEG magic, then noise
    (d / "text.png").write_text("hello, I am not a PNG")
    Image.new("1", (12_000, 12_000)).save(d / "bomb.png")                         # 144 Mpx, a few KB on disk
    return {"empty.jpg": "empty file", "truncated.jpg": "truncated", "truncated.png": "",
            "garbage.jpg": "", "text.png": "unsupported", "bomb.png": "decompression bomb"}


def test_every_bad_file_kind_is_skipped_with_a_reason(tmp_path: Path, cat: Catalog, astronaut) -> None:
    photos = tmp_path / "photos"
    expected = _bad_files(photos, astronaut)
    astronaut.save(photos / "fine.jpg")
    rep = scan(cat, [photos])                         # must not raise
    assert set(_rows(cat)) == {"fine.jpg"}
    skipped = {Path(r["path"]).name: r["reason"] for r in cat.sql("SELECT path, reason FROM skipped").to_pylist()}
    assert set(skipped) == set(expected)
    assert {Path(s.path).name for s in rep.skipped} == set(expected)
    for name, prefix in expected.items():
        assert skipped[name], name
        assert skipped[name].startswith(prefix), (name, skipped[name])
    assert not skipped["garbage.jpg"].startswith("empty")


def test_image_modes_decode(tmp_path: Path, cat: Catalog, astronaut) -> None:
    d = tmp_path / "modes"
    d.mkdir()
    astronaut.convert("P").save(d / "palette.png")
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(d / "palette_transparent.png", transparency=0)          # fully transparent -> white
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.save(d / "clear.png")                                        # fully transparent -> white
    Image.new("LA", (64, 64), (0, 255)).save(d / "black_la.png")      # opaque black
    astronaut.convert("CMYK").save(d / "cmyk.jpg")
    astronaut.convert("L").save(d / "gray.png")
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(d / "sixteen.png")                    # 16-bit grayscale, mean half
    Image.fromarray(np.full((32, 32), 60000, np.uint16)).save(d / "sixteen_bright.png")
    astronaut.save(d / "g.gif")
    astronaut.save(d / "w.webp")
    astronaut.save(d / "t.tiff")
    rep = scan(cat, [d])
    assert rep.n_skipped == 0, rep.skipped
    rows = _rows(cat)
    assert len(rows) == 11
    assert rows["clear.png"]["brightness"] == pytest.approx(1.0, abs=0.01)
    assert rows["palette_transparent.png"]["brightness"] == pytest.approx(1.0, abs=0.01)
    assert rows["black_la.png"]["brightness"] == pytest.approx(0.0, abs=0.01)
    assert rows["sixteen.png"]["brightness"] == pytest.approx(0.5, abs=0.02)
    assert rows["sixteen_bright.png"]["brightness"] == pytest.approx(60000 / 65535, abs=0.02)
    gray_expect = np.asarray(astronaut.convert("L"), dtype=np.float64).mean() / 255
    assert rows["gray.png"]["brightness"] == pytest.approx(gray_expect, abs=0.01)
    assert rows["cmyk.jpg"]["brightness"] == pytest.approx(gray_expect, abs=0.05)


def test_rescan_is_incremental(tmp_path: Path, cat: Catalog, astronaut, coffee) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        astronaut.rotate(90 * i).save(photos / f"a{i}.png")
    first = scan(cat, [photos])
    assert (first.added, first.unchanged) == (4, 0)
    before = {k: v["sha256"] for k, v in _rows(cat).items()}
    again = scan(cat, [photos])
    assert (again.added, again.changed, again.unchanged, again.missing) == (0, 0, 4, 0)
    # add one, change one (new bytes), delete one
    coffee.save(photos / "new.png")
    coffee.save(photos / "a1.png")
    os.utime(photos / "a1.png", (1, 1))     # make sure the mtime differs whatever the clock resolution
    (photos / "a2.png").unlink()
    rep = scan(cat, [photos])
    assert (rep.added, rep.changed, rep.unchanged, rep.missing) == (1, 1, 2, 1)
    rows = _rows(cat)
    assert rows["a2.png"]["status"] == STATUS_MISSING          # the row is kept, marked
    assert rows["a1.png"]["sha256"] == hashlib.sha256((photos / "a1.png").read_bytes()).hexdigest() != before["a1.png"]
    assert rows["a0.png"]["sha256"] == before["a0.png"]
    # it comes back
    astronaut.rotate(180).save(photos / "a2.png")
    rep = scan(cat, [photos])
    assert rep.restored == 1
    assert _rows(cat)["a2.png"]["status"] == STATUS_OK


def test_a_fixed_file_leaves_the_skipped_list(tmp_path: Path, cat: Catalog, astronaut) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    (photos / "x.jpg").write_bytes(b"")
    scan(cat, [photos])
    assert cat.sql("SELECT count(*) AS n FROM skipped").column(0)[0].as_py() == 1
    astronaut.save(photos / "x.jpg")
    scan(cat, [photos])
    assert cat.sql("SELECT count(*) AS n FROM skipped").column(0)[0].as_py() == 0
    assert set(_rows(cat)) == {"x.jpg"}


def test_file_lists_csv_parquet_and_id_collisions(tmp_path: Path, cat: Catalog, astronaut, coffee) -> None:
    a, b = tmp_path / "one", tmp_path / "two"
    a.mkdir(), b.mkdir()
    astronaut.save(a / "x.jpg")
    coffee.save(b / "x.jpg")                          # same relative path under two roots
    scan(cat, [a, b])
    rows = _rows(cat)
    assert len(rows) == 2
    assert {r["path"] for r in rows.values()} == {str((a / "x.jpg").resolve()), str((b / "x.jpg").resolve())}
    assert "x.jpg" in rows and "two/x.jpg" in rows
    # a file list, relative to its own folder; blank lines and comments ignored
    lst = tmp_path / "files.txt"
    (tmp_path / "three").mkdir()
    astronaut.resize((100, 100)).save(tmp_path / "three" / "small.png")
    lst.write_text("# my files\nthree/small.png\n\n")
    scan(cat, [lst])
    assert "three/small.png" in _rows(cat)
    # CSV with ids and a score column: both kept
    coffee.resize((120, 80)).save(tmp_path / "three" / "c.png")
    (tmp_path / "meta.csv").write_text("path,id,score\nthree/c.png,coffee-small,0.75\n")
    scan(cat, [tmp_path / "meta.csv"])
    row = _rows(cat)["coffee-small"]
    assert row["score"] == 0.75 and (row["width"], row["height"]) == (120, 80)
    # Parquet with a path column
    pq.write_table(pa.table({"path": [str(tmp_path / "three" / "small.png")], "score": [2.0]}), tmp_path / "m.parquet")
    scan(cat, [tmp_path / "m.parquet"])
    assert _rows(cat)["three/small.png"]["score"] == 2.0     # same file: same id, score added


def test_bad_sources_are_one_line_errors(tmp_path: Path, cat: Catalog) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        scan(cat, [tmp_path / "nope"])
    (tmp_path / "t.csv").write_text("file,score\na.jpg,1\n")
    with pytest.raises(InputError, match="no 'path' column"):
        scan(cat, [tmp_path / "t.csv"])
    (tmp_path / "d.csv").write_text("path,id\na.jpg,k\nb.jpg,k\n")
    with pytest.raises(InputError, match="duplicate id"):
        scan(cat, [tmp_path / "d.csv"])


def test_missing_file_in_a_list_is_skipped(tmp_path: Path, cat: Catalog) -> None:
    (tmp_path / "l.txt").write_text("gone.jpg\n")
    rep = scan(cat, [tmp_path / "l.txt"])
    assert [s.reason for s in rep.skipped] == ["not found"]


def test_byte_identical_files_are_counted_and_scan_never_touches_files(tmp_path: Path, cat: Catalog, astronaut) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    astronaut.save(photos / "a.jpg")
    shutil.copy(photos / "a.jpg", photos / "b.jpg")
    shutil.copy(photos / "a.jpg", photos / "c.jpg")
    stat_before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in photos.iterdir()}
    rep = scan(cat, [photos])
    assert rep.duplicates == 2
    assert len({r["sha256"] for r in _rows(cat).values()}) == 1
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in photos.iterdir()} == stat_before


def test_inspect_image_custom_pixel_limit(tmp_path: Path, astronaut) -> None:
    astronaut.save(tmp_path / "a.png")
    res = inspect_image(str(tmp_path / "a.png"), max_pixels=1000)
    assert res.reason.startswith("decompression bomb: 512x512")


def test_sample_collection_is_deterministic_and_labelled(tmp_path: Path) -> None:
    from neardup.samples import EDITS, build_collection, read_labels

    kw = dict(photos=("astronaut", "coffee"), burst=("coffee",), burst_frames_n=3)
    a = build_collection(tmp_path / "a", seed=7, **kw)
    b = build_collection(tmp_path / "b", seed=7, **kw)
    c = build_collection(tmp_path / "c", seed=8, **kw)
    digest = lambda fs, root: {f.path.relative_to(root).as_posix(): hashlib.sha256(f.path.read_bytes()).hexdigest() for f in fs}
    assert digest(a, tmp_path / "a") == digest(b, tmp_path / "b")
    assert digest(a, tmp_path / "a") != digest(c, tmp_path / "c")
    labels = read_labels(tmp_path / "a" / "labels.csv")
    # 2 originals + 2 x 7 edits + 3 burst frames + copy + EXIF-rotated + broken
    assert len(labels) == 2 + 2 * len(EDITS) + 3 + 3
    assert {r["kind"] for r in labels} >= set(EDITS) | {"original", "burst-0", "copy", "exif-rotated", "broken"}
    for r in labels:
        assert (tmp_path / "a" / r["path"]).is_file()


def test_interrupted_scan_keeps_finished_chunks_and_resumes(tmp_path: Path, cat: Catalog, astronaut) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    small = astronaut.resize((64, 64))
    for i in range(10):
        small.rotate(i * 30).save(photos / f"{i:02d}.png")

    def stop(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(cat, [photos], chunk_size=4, progress=stop)
    assert len(_rows(cat)) == 4                      # the first chunk was committed
    rep = scan(cat, [photos], chunk_size=4)
    assert (rep.unchanged, rep.added) == (4, 6)
    assert len(_rows(cat)) == 10


def test_catalog_inside_the_photo_folder_is_not_scanned(tmp_path: Path, astronaut) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    astronaut.save(photos / "a.jpg")
    with Catalog(photos / "my.catalog") as c:       # any name: its sidecar holds JPEG thumbnails
        scan(c, [photos])
        assert (c.sidecar / "thumbs").is_dir()
        rep = scan(c, [photos])
        assert (rep.found, rep.unchanged) == (1, 1)
        assert set(_rows(c)) == {"a.jpg"}


@pytest.mark.parametrize("size,expect", [((512, 384), (256, 192)), ((500, 375), (250, 188)), ((2000, 1500), (250, 188)),
                                         ((256, 100), (256, 100)), ((300, 200), (256, 171)), ((600, 900), (150, 225)),
                                         ((3000, 10), (250, 1))])
def test_make_thumbnail_sizes(size, expect) -> None:
    from neardup.sources import make_thumbnail

    im = Image.new("RGB", size, (200, 100, 50))
    t = make_thumbnail(im, 256)
    assert t.size == expect
    assert 192 <= max(t.size) <= 256 or max(size) <= 256
    assert t.getpixel((0, 0)) == (200, 100, 50)
    if max(size) > 256:
        assert t is not im and im.size == size       # a new image; the original is left alone
