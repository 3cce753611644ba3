"""bench/datasets.py and the pair truth of bench/quality_real.py: labels by hand, and a real-frame fixture.

The real-frame test builds OpenCV's tree.avi frames (a static view, then a hand enters) where the
Debian packages are installed (benchmark machines: ffmpeg, opencv-doc) and is skipped elsewhere;
the label logic is checked everywhere on hand-made items.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from datasets import OPENCV, Item, build, drift_truth, read_labels, write_labels  # noqa: E402
from quality_real import PairTruth  # noqa: E402


def test_pair_truth_kinds_loose_and_drift_by_hand():
    items = [
        Item("e/o.jpg", "p1", "edits", "edits"), Item("e/a.jpg", "p1", "edits", "edits"),
        Item("e/b.jpg", "p2", "edits", "edits"),
        Item("f/s0.png", "scene", "tree", "fixed", frame=0), Item("f/s2.png", "scene", "tree", "fixed", frame=2),
        Item("f/h54.png", "h54", "tree", "fixed", "hand", frame=54), Item("f/h55.png", "h55", "tree", "fixed", "hand", frame=55),
        Item("d/0.png", "d-0", "pan", "drift", frame=0, window="5,100"),
        Item("d/5.png", "d-5", "pan", "drift", frame=5, window="5,100"),
        Item("d/50.png", "d-50", "pan", "drift", frame=50, window="5,100"),
        Item("d/100.png", "d-100", "pan", "drift", frame=100, window="5,100"),
    ]
    t = PairTruth(items)
    pair = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(*t.iu))}
    # edits: o~a same, o~b different; the two hand frames: unscored (loose); hand vs scene: scored, different
    assert t.same[pair[0, 1]] and not t.same[pair[0, 2]] and t.kind[pair[0, 1]] == "edits"
    assert not t.scored[pair[5, 6]] and t.scored[pair[3, 5]] and not t.same[pair[3, 5]]
    assert t.same[pair[3, 4]] and t.kind[pair[3, 4]] == "fixed"
    # drift: 5 frames apart same, 100 apart different, 50 apart unscored
    assert t.same[pair[7, 8]] and t.scored[pair[7, 10]] and not t.same[pair[7, 10]] and not t.scored[pair[7, 9]]
    assert drift_truth(items[7], items[8]) is True and drift_truth(items[7], items[9]) is None
    assert t.kind[pair[0, 3]] == "cross"
    # one grouping scored by hand: {o, a, b} {s0, s2, h54} {h55} {0, 5, 50, 100}
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 3])
    m = t.metrics(labels)
    assert m["edits"]["precision"] == pytest.approx(1 / 3) and m["edits"]["recall"] == 1.0
    assert m["static"]["recall"] == 1.0 and m["enter"]["false_pairs"] == 2          # s0~h54, s2~h54
    assert m["enter"]["precision"] == pytest.approx(1 / 3)
    assert m["drift"]["false_pairs"] == 1 and m["drift"]["recall"] == 1.0          # 0~100 (5~100 is 95 apart)
    assert m["cross_false_pairs"] == 0


def test_labels_round_trip(tmp_path):
    items = [Item("a.png", "g", "s", "drift", "", "src", 5, "5,100"), Item("b.png", "h", "s", "places")]
    write_labels(tmp_path / "labels.csv", items)
    assert read_labels(tmp_path / "labels.csv") == items


@pytest.mark.skipif(shutil.which("ffmpeg") is None or not (OPENCV / "tree.avi").exists(),
                    reason="needs Debian's ffmpeg and opencv-doc (benchmark machines only)")
def test_real_tree_frames_hand_kept_apart_by_the_default_grouping(tmp_path):
    from neardup import Catalog
    from neardup.dedup import dedup
    from neardup.embed import get_model
    from neardup.find import embed
    from neardup.sources import scan

    items = build(tmp_path / "real", only=["tree"])
    assert len(items) == 41 and sum("hand" in i.group for i in items) == 14
    # every frame carries its real time in the video (frame / 15 fps) in EXIF, and scan reads it
    t0 = min(dt.datetime.fromisoformat(i.captured_at) for i in items)
    for i in items:
        assert abs((dt.datetime.fromisoformat(i.captured_at) - t0).total_seconds() - i.frame / 15.0) < 1e-3
    m = get_model("sscd-distilled")
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [tmp_path / "real"])
        embed(cat, m)
        paths = dict(zip(*(cat.images(["id", "path"])[c].to_pylist() for c in ("id", "path"))))
        when = dict(zip(*(cat.images(["path", "captured_at"])[c].to_pylist() for c in ("path", "captured_at"))))
        for i in items:
            assert when[str(tmp_path / "real" / i.path)] == dt.datetime.fromisoformat(i.captured_at)
        default = dedup(cat, m.default_threshold, model=m.name, dry_run=True)
        comp = dedup(cat, m.default_threshold, model=m.name, mode="components", dry_run=True)
    hand = {str((tmp_path / "real" / i.path).resolve()) for i in items if "hand" in i.group}

    def scene_group_has_hand(res) -> bool:
        g = {str(Path(paths[r["image_id"]]).resolve()): r["group_id"] for r in res.members.to_pylist()}
        scene = {v for k, v in g.items() if k not in hand}
        return any(g[h] in scene for h in hand)

    assert default.summary["mode"] == "bounded"
    assert scene_group_has_hand(comp)           # the seed's rule chains the hand into the empty scene
    assert not scene_group_has_hand(default)    # the default grouping keeps it apart
