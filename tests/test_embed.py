"""Embedding models: registry, SSCD on real photos and edits, decoding, CLIP loading paths."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from neardup.embed import get_model, list_models, to_rgb
from neardup.embed.base import load_rgb
from neardup.errors import InputError
from neardup.samples import apply_edit, load_photo, save_exif_rotated

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: load_photo(n) for n in PHOTOS}


def test_registry() -> None:
    names = [m.name for m in list_models()]
    assert names == ["sscd", "sscd-distilled", "clip-vit-b-32"]
    assert get_model("SSCD_distilled") is get_model("sscd-distilled")
    assert get_model().name == "sscd"
    with pytest.raises(InputError, match="unknown model 'resnet'"):
        get_model("resnet")
    for m in list_models():
        assert m.dim == 512 and 0 < m.default_threshold <= 1
    assert get_model("clip").default_threshold == 0.98
    assert get_model("sscd").default_threshold < 0.9       # SSCD's scale is not CLIP's
    assert get_model("sscd").availability().usable


def test_sscd_distilled_separates_edits_from_other_photos(photos) -> None:
    """Ground truth from construction: an edit of a photo is a duplicate; another photo is not."""
    m = get_model("sscd-distilled")
    rng = np.random.default_rng(0)
    names = list(photos)
    imgs, owner = [], []
    for n in names:
        imgs.append(photos[n])
        owner.append(n)
        for e in ("jpeg", "resize", "bright", "flip", "crop"):
            imgs.append(apply_edit(photos[n], e, rng))
            owner.append(n)
    V = m.embed(imgs)
    assert V.shape == (len(imgs), 512) and V.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-5)
    S = V @ V.T
    same = np.equal.outer(owner, owner)
    off = ~np.eye(len(imgs), dtype=bool)
    t = m.default_threshold
    assert S[same & off].min() >= t, "an edited copy fell below the default threshold"
    assert S[~same].max() < t - 0.1, "two different photos came within 0.1 of the threshold"


def test_full_sscd_runs_and_agrees_with_distilled_on_ranking(photos) -> None:
    m = get_model("sscd")
    a, c = photos["astronaut"], photos["coffee"]
    V = m.embed([a, ImageOps.mirror(a), c])
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-5)
    assert V[0] @ V[1] > m.default_threshold > V[0] @ V[2]


def test_exif_rotated_copy_embeds_like_its_upright_twin(tmp_path: Path, photos) -> None:
    m = get_model("sscd-distilled")
    up = photos["coffee"]
    up.save(tmp_path / "up.jpg", quality=95)
    save_exif_rotated(up, tmp_path / "rot6.jpg", orientation=6)
    save_exif_rotated(up, tmp_path / "rot8.jpg", orientation=8)
    sideways = up.transpose(Image.ROTATE_90)          # the same pixels without the tag: a different view
    sideways.save(tmp_path / "side.jpg", quality=95)
    V = m.embed_files([str(tmp_path / f) for f in ("up.jpg", "rot6.jpg", "rot8.jpg", "side.jpg")])
    assert V[0] @ V[1] > 0.97 and V[0] @ V[2] > 0.97
    assert V[0] @ V[3] < V[0] @ V[1] - 0.1             # orientation really mattered
    assert load_rgb(str(tmp_path / "rot6.jpg")).size == up.size


def test_to_rgb_modes() -> None:
    sixteen = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(to_rgb(sixteen)).min() == 255
    half = Image.fromarray(np.full((4, 4), 32768, np.uint16))
    assert abs(int(np.asarray(to_rgb(half))[0, 0, 0]) - 128) <= 1
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(to_rgb(clear))[0, 0].tolist() == [255, 255, 255]
    half_red = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    px = np.asarray(to_rgb(half_red))[0, 0].tolist()
    assert px[0] == 255 and 120 <= px[1] <= 135
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb(Image.new("L", (3, 3), 7)).mode == "RGB"


# -- CLIP through fastembed, with a tiny ONNX model made here -------------------------------

def _tiny_clip_dir(d: Path) -> Path:
    """model.onnx: GlobalAveragePool over the 3x224x224 input, then a fixed 3->512 MatMul."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 512)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["image_embeds"])]
    graph = helper.make_graph(nodes, "tiny_clip",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", 512])],
                              initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, d / "model.onnx")
    (d / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "size": {"shortest_edge": 224}, "image_processor_type": "CLIPImageProcessor"}))
    return d


def test_clip_loads_a_local_copy_without_network(tmp_path: Path, photos, monkeypatch) -> None:
    pytest.importorskip("fastembed")
    from neardup.embed.clip import ClipModel

    d = _tiny_clip_dir(tmp_path / "clip")
    monkeypatch.setenv("NEARDUP_CLIP_DIR", str(d))
    monkeypatch.setenv("NEARDUP_MODEL_CACHE", str(tmp_path / "cache"))
    m = ClipModel()
    assert m.availability().usable
    imgs = [photos["astronaut"], photos["coffee"], photos["astronaut"]]
    V = m.embed(imgs)
    assert V.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(V[0], V[2], atol=1e-6)
    # independent expectation: the tiny model is mean colour (after CLIP normalisation) times W
    w = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    ref = []
    for im in imgs[:2]:
        s = 224 / min(im.size)
        r = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BICUBIC)
        l, t = (r.size[0] - 224) // 2, (r.size[1] - 224) // 2
        a = (np.asarray(r.crop((l, t, l + 224, t + 224)), dtype=np.float64) / 255 - mean) / std
        v = a.reshape(-1, 3).mean(0) @ w
        ref.append(v / np.linalg.norm(v))
    assert float(V[0] @ ref[0]) > 0.99 and float(V[1] @ ref[1]) > 0.99


def test_clip_offline_without_a_copy_fails_fast_with_advice(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("fastembed")
    from neardup.embed.clip import ClipModel

    monkeypatch.delenv("NEARDUP_CLIP_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = ClipModel(cache_dir=tmp_path / "empty-cache")
    assert not m.availability().usable
    t0 = time.perf_counter()
    with pytest.raises(InputError) as exc:
        m.embed([Image.new("RGB", (32, 32))])
    assert time.perf_counter() - t0 < 5
    msg = str(exc.value)
    assert "\n" not in msg and "NEARDUP_CLIP_DIR" in msg and "sscd" in msg


def test_clip_dir_missing_files_is_a_clear_error(tmp_path: Path) -> None:
    from neardup.embed.clip import ClipModel

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes(b"x")
    m = ClipModel(model_dir=tmp_path / "half")
    av = m.availability()
    assert not av.usable and "preprocessor_config.json" in av.detail
    with pytest.raises(InputError, match="preprocessor_config.json"):
        m.check_usable()


def _pillow_bilinear(im: Image.Image, w: int, h: int) -> np.ndarray:
    return np.asarray(im.resize((w, h), Image.BILINEAR, reducing_gap=None))


@pytest.mark.parametrize("size", [(512, 384), (500, 375), (600, 400), (1024, 768), (288, 288), (288, 500), (100, 50), (1, 1)])
def test_resize_rgb_equals_pillow_bilinear_on_photo_shapes(photos, size) -> None:
    """The model-input resize: Pillow's result bit for bit for landscape photos (decoded at JPEG
    draft scale: 1024x768 -> 512x384, 2000x1500 -> 500x375), squares, and enlargement."""
    from neardup.embed.resample import resize_rgb

    im = photos["chelsea"].resize(size, Image.BICUBIC)
    got = resize_rgb(im, 288, 288)
    assert got.shape == (288, 288, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _pillow_bilinear(im, 288, 288))


def test_resize_rgb_within_one_level_of_pillow_on_any_shape() -> None:
    """Pillow 12+ picks which pass runs first by a rule of its own; our fixed order can round a
    pixel differently by one level there (never more), e.g. tall images shrunk a lot."""
    from neardup.embed.resample import resize_rgb

    rng = np.random.default_rng(3)
    exact = 0
    for _ in range(40):
        w, h, ow, oh = (int(v) for v in rng.integers(1, 700, 4))
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        d = np.abs(resize_rgb(im, ow, oh).astype(int) - _pillow_bilinear(im, ow, oh))
        assert d.max() <= 1, (w, h, ow, oh)
        exact += int(d.max() == 0)
    assert exact >= 20
    with pytest.raises(ValueError):
        resize_rgb(Image.new("L", (10, 10)), 5, 5)


def test_sscd_prepare_is_pillow_bilinear_to_288(photos) -> None:
    m = get_model("sscd-distilled")
    im = photos["coffee"].resize((512, 384))
    x = m.prepare(im)
    assert x.shape == (288, 288, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, _pillow_bilinear(im, 288, 288))
    np.testing.assert_array_equal(m.prepare(im.resize((288, 288))), np.asarray(im.resize((288, 288))))


@pytest.mark.parametrize("name", ["sscd", "sscd-distilled"])
def test_split_batch_runs_give_each_image_its_own_vector_in_order(photos, name) -> None:
    # a batch is split over concurrent single-threaded runs: the rows must come back in input
    # order and equal the vector of each image embedded alone
    from neardup.embed.sscd import SSCDModel

    m = SSCDModel(name, threads=3)
    X = [m.prepare(to_rgb(photos[n])) for n in PHOTOS[:5]]
    together = m.embed_prepared(X)
    alone = np.concatenate([m.embed_prepared([x]) for x in X])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert len({tuple(np.round(v, 4)) for v in together}) == 5
