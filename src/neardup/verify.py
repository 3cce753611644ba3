"""Geometric verification of a pair: does one image map onto the other by one similarity transform?

Every edit a copy goes through -- crop, resize, JPEG, brightness, greyscale, blur, caption, pad,
a small rotation, a mirror flip -- maps the copy's content onto its original by a single similarity
transform (scale, rotation, translation; mirrored for a flip), so ORB keypoints matched between the
two agree with one such transform. Two pictures of one place from two camera poses do not: the
scene differs by perspective and parallax, or an object moved in front of a fixed camera, and the
matched keypoints split between motions. The check (:func:`check_pair`) on two greyscale
thumbnails:

1. ORB keypoints and binary descriptors of both (scikit-image); the second's mirror image too
   when the plain orientation does not verify;
2. matches: mutual nearest neighbours with Lowe's ratio test;
3. RANSAC fits a similarity transform to the matches (two-match samples scored at once, then a
   least-squares refit; seeded: the verdict is reproducible); the orientation with more inliers counts;
4. verdict: ``True`` (one picture) when the inliers are at least :data:`MIN_RATIO` of the matches
   (and at least :data:`MIN_INLIERS`),
   ``False`` (different pictures) when there are at least :data:`MIN_MATCHES` matches and fewer
   inliers than that, ``None`` (can't tell: too little texture to match) otherwise. A caller keeps
   a link on ``None``.

Measured on the real labelled sets (docs/models.md, "Geometric check for untimed pairs"): edited
copies keep at least 0.58 of their matches as inliers (1st percentile 0.72), look-alike photos of
one place at most 0.36. The check reads the scan's thumbnails (<= 256 px), so it needs no original
file.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: a pair is one picture when at least this share of its matched keypoints fits one similarity transform
MIN_RATIO = 0.5
#: below this many matches the check cannot tell (too little texture): verdict None
MIN_MATCHES = 12
#: and a pair is one picture only with at least this many inliers (two matches always fit a similarity)
MIN_INLIERS = 6
#: keypoints per image (ORB, strongest first)
KEYPOINTS = 400
#: RANSAC inlier distance, pixels of the (<= 256 px) thumbnail
RESIDUAL_PX = 2.5


class Features:
    """ORB keypoints ((x, y), float64) and descriptors (bool) of one image; the mirrored ones on first use."""

    def __init__(self, gray: np.ndarray):
        self.gray = gray
        self.xy, self.desc = _orb(gray)
        self._mirror: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def mirror(self) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints and descriptors of the image mirrored left-right."""
        if self._mirror is None:
            self._mirror = _orb(self.gray[:, ::-1])
        return self._mirror


@dataclass(frozen=True)
class Verdict:
    """The check's outcome for one pair."""

    same: bool | None     # True: one similarity transform explains the matches; False: it does not; None: can't tell
    matches: int
    inliers: int
    mirrored: bool


def _orb(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.feature import ORB

    orb = ORB(n_keypoints=KEYPOINTS, fast_threshold=0.05, downscale=1.2, n_scales=6)
    try:
        orb.detect_and_extract(gray)
    except (RuntimeError, ValueError, IndexError):   # too small or flat: no keypoints
        return np.zeros((0, 2)), np.zeros((0, 256), dtype=bool)
    return orb.keypoints[:, ::-1].astype(np.float64), np.asarray(orb.descriptors, dtype=bool)


def features(gray: np.ndarray) -> Features:
    """ORB features of a greyscale image (float in [0, 1] or uint8)."""
    g = np.asarray(gray)
    g = g / 255.0 if g.dtype.kind != "f" or g.max(initial=0.0) > 1.0 else g.astype(np.float64)
    return Features(np.ascontiguousarray(g, dtype=np.float64))


def load_gray(path: str | Path) -> np.ndarray:
    """A file as a greyscale float array in [0, 1] (EXIF orientation is not applied: thumbnails are upright)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def similarity_inliers(src: np.ndarray, dst: np.ndarray, residual: float = RESIDUAL_PX, samples: int = 256,
                       seed: int = 0) -> np.ndarray:
    """RANSAC for one similarity transform ``dst ~ a * src + b`` (points as complex numbers): the inlier mask.

    Minimal samples are two matches (a similarity has four degrees of freedom); ``samples`` of
    them are scored at once, the best is refitted by least squares on its inliers and scored again.
    Deterministic for a given ``seed``.
    """
    m = len(src)
    if m < 2:
        return np.zeros(m, dtype=bool)
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, m, samples)
    j = (i + rng.integers(1, m, samples)) % m          # a second, different match
    dz = z[i] - z[j]
    ok = np.abs(dz) > 1e-9
    a = np.where(ok, (w[i] - w[j]) / np.where(ok, dz, 1), 0)
    b = w[i] - a * z[i]
    res = np.abs(a[:, None] * z[None, :] + b[:, None] - w[None, :])
    counts = np.where(ok, (res <= residual).sum(axis=1), -1)
    best = res[int(np.argmax(counts))] <= residual
    for _ in range(2):                                 # least-squares refit on the inliers, then rescore
        if best.sum() < 2:
            break
        zi, wi = z[best], w[best]
        zc, wc = zi - zi.mean(), wi - wi.mean()
        den = float(np.vdot(zc, zc).real)
        if den <= 1e-12:
            break
        a1 = np.vdot(zc, wc) / den
        b1 = wi.mean() - a1 * zi.mean()
        refit = np.abs(a1 * z + b1 - w) <= residual
        if refit.sum() < best.sum():
            break
        best = refit
    return best


def _fit(a_xy: np.ndarray, a_d: np.ndarray, b_xy: np.ndarray, b_d: np.ndarray) -> tuple[int, int]:
    """(matches, RANSAC inliers of one similarity transform)."""
    from skimage.feature import match_descriptors

    if len(a_xy) < 2 or len(b_xy) < 2:
        return 0, 0
    m = match_descriptors(a_d, b_d, cross_check=True, max_ratio=0.85)
    if len(m) < 3:
        return len(m), 0
    return len(m), int(similarity_inliers(a_xy[m[:, 0]], b_xy[m[:, 1]]).sum())


def _verdict(matches: int, inliers: int) -> bool | None:
    if inliers >= MIN_INLIERS and inliers >= MIN_RATIO * matches:
        return True
    if matches >= MIN_MATCHES:
        return False
    return None


def check_pair(a: Features, b: Features) -> Verdict:
    """Whether ``b`` is ``a`` under one similarity transform (or its mirror image): see the module docstring."""
    matches, inliers = _fit(a.xy, a.desc, b.xy, b.desc)
    mirrored = False
    if _verdict(matches, inliers) is not True:
        mxy, md = b.mirror
        mm, mi = _fit(a.xy, a.desc, mxy, md)
        if mi > inliers:
            matches, inliers, mirrored = mm, mi, True
    return Verdict(_verdict(matches, inliers), matches, inliers, mirrored)


#: what a stored count depends on besides the two images (ORB, matching and RANSAC settings): stored
#: counts made under other settings are ignored. The verdict itself is made from the counts at read time.
STORE_VERSION = f"orb{KEYPOINTS}-f0.05-d1.2x6/ratio0.85/ransac{RESIDUAL_PX}x256s0/2"


class VerdictStore:
    """The counts (matches, inliers, mirrored) of image pairs already checked, by the two images' sha256,
    in one file of the catalog's sidecar, so that the next dedup or sweep checks only pairs it has not
    seen. A cache: a missing, unreadable or outdated file costs time, never a different verdict."""

    def __init__(self, path: Path | None):
        self.path = path
        self.known: dict[tuple[str, str], tuple[int, int, bool]] = {}
        self.added = 0
        if path is None or not path.is_file():
            return
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["version"]) != STORE_VERSION:
                    return
                cols = [z[k].tolist() for k in ("a", "b", "matches", "inliers", "mirrored")]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return
        self.known = {(a, b): (m, i, r) for a, b, m, i, r in zip(*cols)}

    def get(self, a: str, b: str) -> Verdict | None:
        got = self.known.get((a, b))
        return None if got is None else Verdict(_verdict(got[0], got[1]), got[0], got[1], got[2])

    def put(self, a: str, b: str, v: Verdict) -> None:
        self.known[(a, b)] = (v.matches, v.inliers, v.mirrored)
        self.added += 1

    def save(self) -> None:
        """Write the counts if any were added (beside the file, then renamed onto it: a reader never sees
        half a file; of two processes saving at once the later one's file stays)."""
        if self.path is None or not self.added:
            return
        from .tmpfiles import remove_stale, writing

        keys = list(self.known)
        vals = [self.known[k] for k in keys]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.path.parent)  # temporary files of writers that were killed
            with writing(self.path) as tmp:
                np.savez(tmp, version=np.array(STORE_VERSION), a=np.array([k[0] for k in keys], dtype="<U64"),
                         b=np.array([k[1] for k in keys], dtype="<U64"),
                         matches=np.array([v[0] for v in vals], dtype=np.int32),
                         inliers=np.array([v[1] for v in vals], dtype=np.int32),
                         mirrored=np.array([v[2] for v in vals], dtype=bool))
        except OSError:  # a full disk or a read-only folder: the run goes on, the next one checks again
            return
        self.added = 0


#: features of recently seen images, by content key (a sweep and the dedup after it in one process share them)
_SHARED: "OrderedDict[str, Features]" = OrderedDict()
SHARED_MAX = 4096


class PairChecker:
    """Verdicts for node pairs, from per-node images loaded on demand (features cached per node).

    ``image_of(node)`` returns a greyscale array or None (no image: every pair with it is None).
    ``key_of(node)``, when given, names the image's content (its sha256): features are then also
    kept in a process-wide cache of the last :data:`SHARED_MAX` images, a pair is checked in the
    order of its two keys (so its counts belong to the two images, not to their rows), and with a
    ``store`` the counts of pairs checked before are read from it (:class:`VerdictStore`).
    """

    def __init__(self, image_of: Callable[[int], np.ndarray | None],
                 key_of: Callable[[int], str | None] | None = None, store: VerdictStore | None = None):
        self._image_of = image_of
        self._key_of = key_of
        self.store = store
        self._features: dict[int, Features | None] = {}
        self._verdicts: dict[tuple[int, int], Verdict | None] = {}

    def _feat(self, node: int) -> Features | None:
        if node not in self._features:
            key = self._key_of(node) if self._key_of is not None else None
            if key is not None and key in _SHARED:
                _SHARED.move_to_end(key)
                self._features[node] = _SHARED[key]
                return _SHARED[key]
            img = self._image_of(node)
            f = None if img is None else features(img)
            self._features[node] = f
            if key is not None and f is not None:
                _SHARED[key] = f
                while len(_SHARED) > SHARED_MAX:
                    _SHARED.popitem(last=False)
        return self._features[node]

    def verdict(self, i: int, j: int) -> Verdict | None:
        """The verdict for nodes ``i`` and ``j`` (cached; None when either has no image)."""
        key = (min(i, j), max(i, j))
        if key not in self._verdicts:
            self._verdicts[key] = self._check(*key)
        return self._verdicts[key]

    def _check(self, i: int, j: int) -> Verdict | None:
        ka = kb = None
        if self._key_of is not None:
            ka, kb = self._key_of(i), self._key_of(j)
            if ka is not None and kb is not None and kb < ka:
                i, j, ka, kb = j, i, kb, ka
        if self.store is not None and ka is not None and kb is not None:
            known = self.store.get(ka, kb)
            if known is not None:
                return known
        fa, fb = self._feat(i), self._feat(j)
        if fa is None or fb is None:
            return None
        v = check_pair(fa, fb)
        if self.store is not None and ka is not None and kb is not None:
            self.store.put(ka, kb, v)
        return v

    def rejects(self, i: int, j: int) -> bool:
        """True only when the check finds the pair to be different pictures."""
        v = self.verdict(i, j)
        return v is not None and v.same is False

    @property
    def checked(self) -> int:
        """Pairs checked so far."""
        return len(self._verdicts)
