"""Geometric check of untimed pairs (issue 11, places without capture times).

- the check itself on scikit-image's bundled photos: every edit kind of the benchmarks (crop,
  resize, JPEG, brightness, greyscale, blur, caption, pad, small rotation, flip) is one similarity
  transform away from its photo and must never be called a different picture; a scene where a large
  textured object moved in front of a fixed background, and two different photos, are not called
  one picture;
- the RANSAC fit against an independent reference (the transform that made the points);
- the verified links against a brute-force reference (tests/test_chains.py's: links allowed by the
  time rule less the pairs the check rejects, BFS components, Prim splits), hypothesis over random
  vectors, capture times and rejections;
- through dedup: a catalog of real thumbnails, the check on by default with the window and off with
  ``verify=False``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter, ImageOps
from reference import same_partition
from test_chains import full_forest, ref_components, ref_split, window_case

from neardup.grouping import group_nodes, verified_link_forest
from neardup.verify import PairChecker, check_pair, features, similarity_inliers


def _photo(name: str) -> Image.Image:
    from skimage import data

    arr = data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(data, name)()
    return Image.fromarray(arr).convert("RGB")


def _thumb(im: Image.Image) -> np.ndarray:
    from neardup.sources import make_thumbnail

    return np.asarray(make_thumbnail(im).convert("L"), dtype=np.float64) / 255.0


def _edits(im: Image.Image, rng: np.random.Generator) -> dict[str, Image.Image]:
    from neardup.samples import apply_edit

    out = {e: apply_edit(im, e, rng) for e in ("jpeg", "resize", "bright", "flip", "crop", "rotate", "text")}
    out["pad"] = ImageOps.expand(im, border=im.width // 12, fill=(255, 255, 255))
    out["grey"] = im.convert("L").convert("RGB")
    out["blur"] = im.filter(ImageFilter.GaussianBlur(max(1.0, 0.004 * max(im.size))))
    return out


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera", "rocket"])
def test_every_edit_kind_is_one_picture(name):
    """An edited copy is never rejected; with this much texture the check says so (True)."""
    im = _photo(name)
    fa = features(_thumb(im))
    for kind, copy in _edits(im, np.random.default_rng(1)).items():
        v = check_pair(fa, features(_thumb(copy)))
        assert v.same is True, (name, kind, v)
        assert v.mirrored == (kind == "flip"), (name, kind, v)
        # symmetric: the copy against the photo too
        assert check_pair(features(_thumb(copy)), fa).same is True, (name, kind)


def _moved_object(bg: Image.Image, obj: Image.Image, at: tuple[int, int]) -> Image.Image:
    out = bg.copy()
    out.paste(obj, at)
    return out


def test_object_moved_in_front_of_a_fixed_background_is_rejected():
    """A fixed camera, a large textured object (a chessboard-like board: a crop of `checkerboard`
    with the astronaut's texture) moved and turned between two shots: no one similarity transform maps
    one shot onto the other, so the check says different pictures (False)."""
    from skimage import data

    bg = _photo("coffee").resize((512, 384))
    board = Image.fromarray(data.checkerboard()).convert("RGB").resize((240, 240))
    a = _moved_object(bg, board, (40, 60))
    b = _moved_object(bg, board.rotate(25, expand=True, fillcolor=(255, 255, 255)), (200, 40))
    v = check_pair(features(_thumb(a)), features(_thumb(b)))
    assert v.same is False, v


def test_different_photos_are_not_one_picture():
    """Different photos: never True (few matches: None; or False)."""
    names = ["astronaut", "coffee", "chelsea", "camera", "rocket"]
    feats = {n: features(_thumb(_photo(n))) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert check_pair(feats[a], feats[b]).same is not True, (a, b)


def test_flat_images_cannot_be_told():
    """No texture, no keypoints: the verdict is None (a caller keeps the link)."""
    flat = np.full((120, 160), 0.5)
    assert check_pair(features(flat), features(flat)).same is None


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(12, 80), frac=st.floats(0.55, 1.0))
def test_ransac_finds_the_transform_that_made_the_points(seed, m, frac):
    """Points mapped by a known similarity (scale 0.5-2, any angle), a share replaced by random ones far off:
    the inliers found include every true point and no far-off one."""
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 256, (m, 2))
    s, th = rng.uniform(0.5, 2.0), rng.uniform(-np.pi, np.pi)
    R = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    dst = src @ R.T + rng.uniform(-50, 50, 2)
    good = rng.random(m) < frac
    good[:2] = True                                  # at least two true matches
    noise = rng.uniform(-400, 400, (m, 2))
    pred = src @ R.T + (dst - src @ R.T)
    far = np.linalg.norm(noise - pred, axis=1) > 10   # a replaced point that happens to land near is not "off"
    dst = np.where(good[:, None], dst, noise)
    assume(good.sum() >= 0.55 * m)
    got = similarity_inliers(src, dst, samples=512)
    assert got[good].all()
    assert not got[~good & far].any()


# ------------------------------------------------------------------------------------------------
# verified links = the time rule's links less the rejected untimed pairs (brute-force reference)
# ------------------------------------------------------------------------------------------------
def ref_verified_links(S, times, t, window, link, rejected) -> np.ndarray:
    L = S >= t
    tm = ~np.isnan(times)
    both = tm[:, None] & tm[None, :]
    far = both & (np.abs(times[:, None] - times[None, :]) > window)
    L &= ~far | (S >= link)
    L &= ~(~both & (S < link) & rejected)            # untimed pairs below the link: only if not rejected
    np.fill_diagonal(L, False)
    return L


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 14), t_int=st.integers(2000, 30000),
       gap=st.integers(-15000, 15000), link_gap=st.integers(0, 20000), window=st.sampled_from([0.5, 1.0, 3.0]),
       untimed=st.floats(0.0, 1.0), reject_share=st.floats(0.0, 1.0))
def test_verified_links_equal_bruteforce_reference(seed, n, t_int, gap, link_gap, window, untimed, reject_share):
    V, S, t, bound, link, times, rng = window_case(seed, n, t_int, gap, link_gap, untimed, salt=11)
    R = rng.random((n, n)) < reject_share
    R = np.triu(R, 1)
    R = R | R.T
    asked = []

    def reject(i, j):
        asked.append((min(i, j), max(i, j)))
        return bool(R[i, j])

    rank = rng.permutation(n)
    f = full_forest(V, min(t, 0.01))
    links, stats = verified_link_forest(f, V, times, t, window, link, reject)
    got = group_nodes(f, V, t, rank, "bounded", bound, times=times, window_s=window, window_link=link, links=links)
    L = ref_verified_links(S, times, t, window, link, R)
    want = np.empty(n, np.int64)
    k = 0
    for comp in ref_components(L):
        for part in ref_split(S, L, comp, rank, bound):
            want[part] = k
            k += 1
    assert same_partition(got.labels, want)
    # only untimed pairs in [t, link) are ever asked, each once
    tm = ~np.isnan(times)
    assert len(asked) == len(set(asked)) == stats["checked"]
    for i, j in asked:
        assert not (tm[i] and tm[j]) and t <= S[i, j] < link
    assert stats["rejected"] == sum(R[i, j] for i, j in asked)


# ------------------------------------------------------------------------------------------------
# through dedup, on real thumbnails
# ------------------------------------------------------------------------------------------------
def test_dedup_checks_untimed_pairs_by_default(tmp_path):
    """A photo and its crop, and the two 'moved board' shots, stored with vectors that put each pair at
    0.906 (below the window link 0.95; no capture times) and the pairs 0.42 apart: with the check (the
    default under sscd's window) the board shots are two groups of one, the photo and its crop stay
    one group; with ``verify=False`` both pairs group."""
    from skimage import data

    from neardup import Catalog
    from neardup.dedup import dedup
    from neardup.embed import get_model
    from neardup.sources import scan

    photos = tmp_path / "photos"
    photos.mkdir()
    im = _photo("astronaut")
    im.save(photos / "a_photo.png")
    _edits(im, np.random.default_rng(2))["crop"].save(photos / "b_crop.png")
    bg = _photo("coffee").resize((512, 384))
    board = Image.fromarray(data.checkerboard()).convert("RGB").resize((240, 240))
    _moved_object(bg, board, (40, 60)).save(photos / "c_board1.png")
    _moved_object(bg, board.rotate(25, expand=True, fillcolor=(255, 255, 255)), (200, 40)).save(photos / "d_board2.png")
    model = get_model("sscd")
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [photos])
        meta = cat.images(["id", "path"])
        ids = [i for _, i in sorted(zip(meta["path"].to_pylist(), meta["id"].to_pylist()))]
        # a~b and c~d 0.906, b~c 0.423: two components at sscd's 0.60
        ang = np.radians([0.0, 25.0, 90.0, 115.0])
        vecs = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
        vecs = np.concatenate([vecs, np.zeros((4, 510), np.float32)], 1)
        cat.put_embeddings(model.name, ids, vecs)
        on = dedup(cat, 0.60, model=model.name, dry_run=True)
        off = dedup(cat, 0.60, model=model.name, dry_run=True, verify=False)

    def groups(res):
        gid = dict(zip(res.members["image_id"].to_pylist(), res.members["group_id"].to_pylist()))
        return [gid[i] for i in ids]
    g_off, g_on = groups(off), groups(on)
    assert g_off[0] == g_off[1] != g_off[2] == g_off[3]
    assert g_on[0] == g_on[1] and len({g_on[0], g_on[2], g_on[3]}) == 3
    assert on.summary["geometric_check"] == {"pairs_checked": 2, "rejected": 1}
    assert off.summary["geometric_check"] is None
    assert "geometric check" in on.summary["grouping"] and "geometric check" not in off.summary["grouping"]


def test_pair_checker_without_an_image_keeps_the_link():
    chk = PairChecker(lambda node: None)
    assert chk.verdict(0, 1) is None and not chk.rejects(0, 1) and chk.checked == 1


def test_verify_without_a_window_is_refused_in_one_line(tmp_path):
    """--verify with --window 0 or another mode: one line, exit 2, catalog unchanged; --no-verify is accepted."""
    import subprocess
    import sys

    from neardup import Catalog
    from neardup.dedup import dedup
    from neardup.errors import InputError

    db = tmp_path / "c.duckdb"
    V = np.eye(3, 512, dtype=np.float32)
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", ["a", "b", "c"], V)
        with pytest.raises(InputError, match="--verify .* needs mode bounded"):
            dedup(cat, 0.6, model="sscd", window=0, verify=True)
        with pytest.raises(InputError, match="--verify"):
            dedup(cat, 0.6, model="sscd", mode="components", verify=True)
        assert dedup(cat, 0.6, model="sscd", window=0, verify=False, dry_run=True).summary["geometric_check"] is None
    before = db.read_bytes()
    r = subprocess.run([sys.executable, "-m", "neardup", "dedup", "-t", "0.6", "--window", "0", "--verify",
                        "--db", str(db)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--verify" in lines[0] and "Traceback" not in r.stderr
    assert db.read_bytes() == before


def test_features_are_shared_between_checkers_by_content_key():
    """A second checker (a dedup after a sweep) reuses the features of the same content: no image loaded again."""
    im = _thumb(_photo("camera"))
    loads = []

    def image_of(node):
        loads.append(node)
        return im

    a = PairChecker(image_of, key_of=lambda node: f"test-shared-{node}")
    va = a.verdict(0, 1)
    b = PairChecker(image_of, key_of=lambda node: f"test-shared-{node}")
    vb = b.verdict(0, 1)
    assert loads == [0, 1] and va == vb and va.same is True


def test_stored_counts_spare_the_next_check_and_give_the_same_verdicts(tmp_path, monkeypatch):
    """A pair checked once is read back from the sidecar file by the next checker (a later dedup): no
    image loaded, the same verdict; pairs are stored by their two images' keys, whatever their rows;
    a file of other settings, or an unreadable one, is ignored (checked afresh)."""
    from neardup import verify
    from neardup.verify import VerdictStore

    rng = np.random.default_rng(5)
    base = _photo("astronaut")
    imgs = {"k0": _thumb(base), "k1": _thumb(_edits(base, rng)["crop"]), "k2": _thumb(_photo("coffee"))}
    path = tmp_path / "verify" / "pairs.npz"

    def checker(keys, loads):
        def image_of(node):
            loads.append(node)
            return imgs[keys[node]]
        return PairChecker(image_of, key_of=lambda node: keys[node], store=VerdictStore(path))

    verify._SHARED.clear()
    first = checker(["k0", "k1", "k2"], loads := [])
    v01, v02 = first.verdict(0, 1), first.verdict(0, 2)
    assert v01.same is True and loads
    first.store.save()
    verify._SHARED.clear()
    again = checker(["k2", "k1", "k0"], loads2 := [])          # other rows, same images
    assert again.verdict(2, 1) == v01 and again.verdict(0, 2) == v02 and loads2 == []
    assert again.store.added == 0
    again.store.save()                                         # nothing new: the file is not rewritten

    # reference: the counts are those of a direct check in key order
    direct = check_pair(features(imgs["k0"]), features(imgs["k1"]))
    assert (v01.matches, v01.inliers, v01.mirrored) == (direct.matches, direct.inliers, direct.mirrored)

    with np.load(path) as z:
        parts = {k: z[k] for k in z.files}
    parts["version"] = np.array("other settings")
    np.savez(path, **parts)
    verify._SHARED.clear()
    stale = checker(["k0", "k1", "k2"], loads3 := [])
    assert stale.verdict(0, 1) == v01 and loads3                # checked afresh
    path.write_bytes(b"not a zip file")
    assert VerdictStore(path).known == {}

    # a store that cannot be written (full disk, read-only folder) is skipped: the check's verdicts stand
    import neardup.tmpfiles as tmpfiles

    def no_space(final, suffix=tmpfiles.TMP_SUFFIX):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tmpfiles, "writing", no_space)
    full = checker(["k0", "k1", "k2"], [])
    assert full.verdict(0, 1) == v01
    full.store.save()
    assert path.read_bytes() == b"not a zip file" and full.store.added == 1


def test_a_second_dedup_reads_the_stored_checks(tmp_path, monkeypatch):
    """dedup keeps what the check found in the catalog's sidecar; the next dedup of the same catalog computes
    no features and decides the same groups; a read-only open writes no file."""
    from neardup import Catalog, verify
    from neardup.dedup import dedup
    from neardup.sources import scan

    photos = tmp_path / "photos"
    photos.mkdir()
    im = _photo("astronaut")
    im.save(photos / "a.png")
    _edits(im, np.random.default_rng(2))["crop"].save(photos / "b.png")
    _photo("coffee").save(photos / "c.png")
    db = tmp_path / "c.duckdb"
    with Catalog(db) as cat:
        scan(cat, [photos])
        ids = sorted(cat.images(["id"])["id"].to_pylist())
        ang = np.radians([0.0, 25.0, 50.0])                     # every pair 0.64-0.91: below the window link
        vecs = np.concatenate([np.stack([np.cos(ang), np.sin(ang)], 1), np.zeros((3, 510))], 1).astype(np.float32)
        cat.put_embeddings("sscd", ids, vecs)
        verify._SHARED.clear()
        first = dedup(cat, 0.60, model="sscd", dry_run=True)
    assert first.summary["geometric_check"]["pairs_checked"] >= 1
    assert (db.with_name(db.name + ".d") / "verify" / "pairs.npz").is_file()
    calls = []
    real = verify.features
    monkeypatch.setattr(verify, "features", lambda g: calls.append(1) or real(g))
    verify._SHARED.clear()
    with Catalog(db) as cat:
        second = dedup(cat, 0.60, model="sscd", dry_run=True)
    assert calls == []
    key = lambda res: sorted(zip(res.members["image_id"].to_pylist(), res.members["master_id"].to_pylist()))  # noqa: E731
    assert key(second) == key(first) and second.summary["geometric_check"] == first.summary["geometric_check"]
    stored = db.with_name(db.name + ".d") / "verify" / "pairs.npz"
    stored.unlink()
    verify._SHARED.clear()
    with Catalog(db, read_only=True) as cat:
        assert key(dedup(cat, 0.60, model="sscd", dry_run=True)) == key(first)
    assert not stored.exists()
