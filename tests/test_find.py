"""Embed pass and find (resumable, byte-identical files once, re-embed on change) and the CLI end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neardup.catalog import Catalog
from neardup.cli import main
from neardup.embed import get_model
from neardup.errors import InputError
from neardup.find import EmbedInterrupted, embed, pending_images
from neardup.samples import apply_edit, load_photo, read_labels
from neardup.sources import scan

MODEL = "sscd-distilled"   # the fast one; `sscd` itself is exercised in test_embed.py


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: load_photo(n) for n in ("astronaut", "coffee", "rocket", "camera")}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _vectors(cat: Catalog, model: str = MODEL) -> dict[str, np.ndarray]:
    e = cat.load_embeddings(model)
    return {i: np.asarray(v) for i, v in zip(e.ids.tolist(), e.vectors)}


def test_embed_once_per_content_and_resume_after_interrupt(tmp_path: Path, photos) -> None:
    d = tmp_path / "p"
    d.mkdir()
    for n, im in photos.items():
        im.save(d / f"{n}.jpg", quality=92)
        im.resize((im.width // 2, im.height // 2)).save(d / f"{n}_small.jpg", quality=92)
    shutil.copy(d / "astronaut.jpg", d / "astronaut_copy.jpg")
    shutil.copy(d / "astronaut.jpg", d / "astronaut_copy2.jpg")
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [d])
        assert pending_images(cat, MODEL).num_rows == 10

        calls = []

        def stop_after_first_chunk(done: int, total: int) -> None:
            calls.append(done)
            if done >= 4:        # batches of 2, commits every 3: the first 4 are committed by now
                raise KeyboardInterrupt

        with pytest.raises(EmbedInterrupted) as exc:
            embed(cat, MODEL, chunk_size=3, batch_size=2, progress=stop_after_first_chunk)
        kept = exc.value.report.embedded + exc.value.report.copied
        assert kept == 4
        assert len(_vectors(cat)) == kept                       # the finished chunk was committed
        rest = embed(cat, MODEL, chunk_size=3, batch_size=2)
        assert rest.up_to_date == kept
        assert len(_vectors(cat)) == 10
        assert pending_images(cat, MODEL).num_rows == 0
        # 8 distinct contents (the two copies share astronaut.jpg's bytes): the model ran 8 times in all
        first = exc.value.report
        assert first.embedded + rest.embedded == 8
        assert first.copied + rest.copied == 2
        v = _vectors(cat)
        np.testing.assert_array_equal(v["astronaut.jpg"], v["astronaut_copy.jpg"])
        np.testing.assert_array_equal(v["astronaut.jpg"], v["astronaut_copy2.jpg"])
        # independent check: the stored vector is what the model gives for that file
        ref = get_model(MODEL).embed_files([str(d / "coffee_small.jpg")])[0]
        assert _cos(ref, v["coffee_small.jpg"]) > 0.9999  # stored: canonical (rounded to 1/2048)
        # a new byte-identical file later gets a copied vector, no model run
        shutil.copy(d / "rocket.jpg", d / "rocket_again.jpg")
        scan(cat, [d])
        again = embed(cat, MODEL)
        assert (again.embedded, again.copied) == (0, 1)
        np.testing.assert_array_equal(_vectors(cat)["rocket_again.jpg"], v["rocket.jpg"])


def test_changed_file_is_re_embedded_and_vanished_file_is_not_retried(tmp_path: Path, photos) -> None:
    d = tmp_path / "p"
    d.mkdir()
    photos["astronaut"].save(d / "x.png")
    photos["coffee"].save(d / "y.png")
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [d])
        embed(cat, MODEL)
        old = _vectors(cat)["x.png"]
        photos["rocket"].save(d / "x.png")                   # same name, different photo
        import os
        os.utime(d / "x.png", (5, 5))
        (d / "y.png").unlink()
        rep = scan(cat, [d])
        assert (rep.changed, rep.missing) == (1, 1)
        assert pending_images(cat, MODEL).column("id").to_pylist() == ["x.png"]
        er = embed(cat, MODEL)
        assert er.embedded == 1
        new = _vectors(cat)["x.png"]
        rocket = get_model(MODEL).embed([photos["rocket"]])[0]
        assert float(new @ rocket) > 0.99 and float(new @ old) < 0.5


def test_file_changed_after_scan_is_reported_not_embedded(tmp_path: Path, photos) -> None:
    d = tmp_path / "p"
    d.mkdir()
    photos["astronaut"].save(d / "x.png")
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [d])
        (d / "x.png").write_bytes(b"garbage now")
        rep = embed(cat, MODEL)
        assert rep.embedded == 0 and [f.reason for f in rep.failed] == ["changed since it was scanned (run `neardup scan` again)"]
        assert cat.sql("SELECT status FROM images").column(0).to_pylist() == ["unreadable"]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_find_end_to_end_on_a_folder(tmp_path: Path, photos, capsys) -> None:
    """Ground truth by construction: each photo and its edits form one group; one master each."""
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(3)
    truth: dict[str, str] = {}
    for n, im in photos.items():
        im.save(d / f"{n}.jpg", quality=92)
        truth[f"{n}.jpg"] = n
        for e in ("jpeg", "resize", "bright", "flip", "crop", "text"):
            apply_edit(im, e, rng).save(d / f"{n}__{e}.jpg", quality=92)
            truth[f"{n}__{e}.jpg"] = n
    (d / "broken.jpg").write_bytes((d / "coffee.jpg").read_bytes()[:500])
    db = tmp_path / "cat.duckdb"
    code, out, err = _cli(["find", str(d), "--db", str(db), "--model", MODEL], capsys)
    assert code == 0, err
    assert "Threshold sweep" in out and "run 1 applied" in out
    assert "broken.jpg" in err
    with Catalog(db) as cat:
        rows = cat.sql("SELECT m.image_id, m.group_id, m.is_master, i.is_suppressed FROM run_members m "
                       "JOIN images i ON i.id = m.image_id WHERE m.run_id = 1").to_pylist()
    assert {r["image_id"] for r in rows} == set(truth)
    groups: dict[int, set[str]] = {}
    for r in rows:
        groups.setdefault(r["group_id"], set()).add(truth[r["image_id"]])
    assert all(len(g) == 1 for g in groups.values()), "two different photos were grouped"
    assert len(groups) == len(photos)
    assert sum(r["is_master"] for r in rows) == len(photos)
    assert sum(r["is_suppressed"] for r in rows) == len(truth) - len(photos)
    # the photos themselves were not touched
    assert len(list(d.iterdir())) == len(truth) + 1
    code, out, _ = _cli(["skipped", "--db", str(db)], capsys)
    assert code == 0 and "broken.jpg" in out and "truncated" in out
    # find again with nothing new: no second (identical) run, and it says so
    code, out, err = _cli(["find", str(d), "--db", str(db), "--model", MODEL], capsys)
    assert code == 0, err
    assert "nothing changed: run 1 is already in force" in out
    with Catalog(db) as cat:
        assert [(r["id"], r["status"]) for r in cat.runs()] == [(1, "applied")]


def test_demo_runs_offline_and_recovers_the_photos(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "demo"
    code, out, err = _cli(["demo", str(folder), "--model", MODEL], capsys)
    assert code == 0, err
    labels = read_labels(folder / "photos" / "labels.csv")
    n_photos = len({r["group"] for r in labels if r["group"]})
    assert f"ground truth: {n_photos} distinct photos" in out
    with Catalog(folder / "neardup.duckdb") as cat:
        run = cat.runs()[-1]
        members = cat.run_members(run["id"]).to_pylist()
    group_of = {r["path"]: r["group"] for r in labels}
    found: dict[int, set[str]] = {}
    for m in members:
        found.setdefault(m["group_id"], set()).add(group_of[m["image_id"]])
    # every found group is pure (one source photo). The model's default grouping (bounded: every member
    # within the bound of its master) may leave a heavily edited copy (2-5 degree rotation, caption,
    # JPEG q30-50) on its own; every original still has its group of duplicates
    assert all(len(g) == 1 for g in found.values())
    heavy = sum(1 for r in labels if r["kind"] in ("rotate", "text", "jpeg"))
    assert n_photos <= len(found) <= n_photos + heavy
    gid = {m["image_id"]: m["group_id"] for m in members}
    sizes = {g: sum(1 for x in gid.values() if x == g) for g in set(gid.values())}
    assert all(sizes[gid[r["path"]]] >= 2 for r in labels if r["kind"] == "original")
    assert run["mode"] == "bounded" and run["summary"]["bound"] is not None
    # a second demo run reuses everything and gives the same answer
    code2, out2, err2 = _cli(["demo", str(folder), "--model", MODEL], capsys)
    assert code2 == 0, err2
    assert "0 embedded" in out2


def test_demo_refuses_a_foreign_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine.jpg").write_bytes(b"x")
    code, out, err = _cli(["demo", str(tmp_path)], capsys)
    assert code == 2 and "not a neardup demo folder" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "mine.jpg").read_bytes() == b"x"


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = _cli(["scan", str(tmp_path / "nope"), "--db", str(tmp_path / "c.duckdb")], capsys)
    assert code == 2 and "no such file or folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(["embed", "--model", "nope", "--db", str(tmp_path / "c.duckdb")], capsys)
    assert code == 2 and "unknown model" in err
    code, _, err = _cli(["find", str(tmp_path), "--threshold", "1.5", "--db", str(tmp_path / "c.duckdb")], capsys)
    assert code == 2 and "threshold" in err
    code, out, _ = _cli(["models"], capsys)
    assert code == 0 and "sscd-distilled" in out and "clip-vit-b-32" in out


def test_scan_and_embed_decodes_once_and_matches_the_two_step_path(tmp_path: Path, photos) -> None:
    from neardup.find import scan_and_embed
    from neardup.samples import save_exif_rotated

    d = tmp_path / "p"
    d.mkdir()
    for n, im in photos.items():
        im.resize((im.width * 3, im.height * 3)).save(d / f"{n}.jpg", quality=90)   # big enough for JPEG draft
    shutil.copy(d / "coffee.jpg", d / "coffee_copy.jpg")
    save_exif_rotated(photos["rocket"], d / "rocket_rot.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    with Catalog(tmp_path / "two.duckdb") as two:
        scan(two, [d])
        embed(two, MODEL)
        ref = _vectors(two)
    with Catalog(tmp_path / "one.duckdb") as one:
        sr, er = scan_and_embed(one, [d], MODEL, batch_size=2, chunk_size=2)
        got = _vectors(one)
        assert pending_images(one, MODEL).num_rows == 0
    assert sr.n_skipped == 1 and sr.added == 6
    assert (er.embedded, er.copied) == (5, 1)           # 6 files, 5 distinct contents
    assert set(got) == set(ref)
    for k in ref:
        assert _cos(got[k], ref[k]) > 0.9999, k


def test_library_find_dry_run_writes_no_run(tmp_path: Path, photos) -> None:
    from neardup.find import find

    d = tmp_path / "p"
    d.mkdir()
    rng = np.random.default_rng(1)
    for n in ("astronaut", "coffee"):
        photos[n].save(d / f"{n}.png")
        apply_edit(photos[n], "jpeg", rng).save(d / f"{n}_q.jpg", quality=95)
    res = find([d], tmp_path / "c.duckdb", model=MODEL, dry_run=True)
    assert res.threshold == get_model(MODEL).default_threshold
    groups: dict[int, set[str]] = {}
    for r in res.dedup.members.to_pylist():
        groups.setdefault(r["group_id"], set()).add(r["image_id"].split("_")[0].split(".")[0])
    assert sorted(map(sorted, groups.values())) == [["astronaut"], ["coffee"]]
    with Catalog(tmp_path / "c.duckdb") as cat:
        assert cat.runs() == [] and cat.sql("SELECT count(*) FROM images WHERE is_suppressed").column(0)[0].as_py() == 0
    with pytest.raises(InputError, match="threshold"):
        find([d], tmp_path / "c.duckdb", model=MODEL, threshold=0)
