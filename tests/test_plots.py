"""The sweep figure and the contact sheet are real PNG files of the documented size."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from neardup.catalog import Catalog
from neardup.dedup import load_scope, similarity_forest
from neardup.errors import InputError
from neardup.ingest import import_embeddings
from neardup.plots import SWEEP_SIZE, contact_sheet, plot_sweep
from neardup.sweep import sweep
from neardup.synthetic import seed_shaped

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, read by hand (independent of Pillow/matplotlib)."""
    data = open(path, "rb").read(32)
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    col = seed_shaped(1500, seed=4)
    c = Catalog(tmp_path_factory.mktemp("pl") / "cat.duckdb")
    import_embeddings(c, col.vectors, col.ids, meta=col.meta_table())
    yield c
    c.close()


def test_plot_sweep_png(cat, tmp_path):
    ts = [0.99, 0.98, 0.97, 0.95]
    rows = sweep(cat, ts)
    forest = similarity_forest(cat, 0.95, scope=load_scope(cat))
    out = plot_sweep(rows, forest, tmp_path / "sweep.png", chosen=0.98)
    assert out == tmp_path / "sweep.png"
    assert png_size(out) == SWEEP_SIZE == (800, 900)
    from PIL import Image

    with Image.open(out) as im:
        im.load()
        px = np.asarray(im.convert("RGB"))
    assert px.std() > 10  # something was drawn, not a blank canvas
    assert not list(tmp_path.glob("*.tmp*"))
    # rows only (no forest), no chosen threshold
    out2 = plot_sweep(rows, None, tmp_path / "rows.png")
    assert png_size(out2) == SWEEP_SIZE


def test_plot_sweep_errors(tmp_path):
    with pytest.raises(InputError, match="no rows"):
        plot_sweep([], None, tmp_path / "x.png")
    row = dict(threshold=0.98, pairs=1, groups=1, suppressed=1, retained=1, largest_group=2)
    with pytest.raises(InputError, match="no such folder"):
        plot_sweep([row], None, tmp_path / "missing" / "x.png")


def test_contact_sheet_with_and_without_images(tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(img)
    before = img.read_bytes()
    pairs = [dict(a="x", b="y", sim=0.975, path_a=str(img), path_b=str(tmp_path / "gone.jpg")),
             dict(a="p", b="q", sim=0.971, path_a=None, path_b=None)]
    out = contact_sheet(pairs, tmp_path / "sheet.png", title="band", thumb=100)
    w, h = png_size(out)
    assert w == 2 * (100 + 8) + 8 + 420 and h == 28 + 2 * (100 + 16)
    with Image.open(out) as im:
        red = np.asarray(im.convert("RGB"))[28 + 8 + 50, 8 + 50]
    assert tuple(red) == (200, 30, 30)  # the real image was pasted in cell A of row 1
    assert img.read_bytes() == before  # the user's file is only read
