"""CLIP ViT-B/32 image tower (the seed's 512-d model) through fastembed's ONNX runtime.

Where the weights come from, in order:

1. ``NEARDUP_CLIP_DIR`` (or ``model_dir=``): a folder with ``model.onnx`` and
   ``preprocessor_config.json`` — a local copy, no network at all.
2. the fastembed cache in ``NEARDUP_MODEL_CACHE`` (default ``~/.cache/neardup/fastembed``),
   filled by an earlier download.
3. a one-time download from the Hugging Face hub, only when the hub answers within a couple of
   seconds and ``HF_HUB_OFFLINE`` is not set.

Offline with no copy it fails at once with a message saying what to do: offline-ness is decided
*before* fastembed is constructed (``HF_HUB_OFFLINE=1`` is set explicitly), because fastembed
left to itself spends ~40 s in retries before failing.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InputError
from .base import Availability, EmbeddingModel, l2_normalise

if TYPE_CHECKING:  # numpy and Pillow load on the first image, not on import
    import numpy as np
    from PIL import Image

FASTEMBED_NAME = "Qdrant/clip-ViT-B-32-vision"
HUB_HOST = "huggingface.co"
ENV_DIR = "NEARDUP_CLIP_DIR"
ENV_CACHE = "NEARDUP_MODEL_CACHE"


def default_cache_dir() -> Path:
    """Where downloaded fastembed weights are kept (``NEARDUP_MODEL_CACHE`` overrides)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neardup" / "fastembed"


def _cached(cache_dir: Path) -> bool:
    """Whether the fastembed cache holds this model's ONNX file (no network)."""
    if not cache_dir.is_dir():
        return False
    for d in cache_dir.glob("*clip-ViT-B-32-vision*"):
        if any(d.rglob("model.onnx")):
            return True
    return False


def hub_reachable(timeout: float = 2.0) -> bool:
    """A bounded check (DNS included) that the hub answers on port 443; False when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


class ClipModel(EmbeddingModel):
    """CLIP ViT-B/32 vision tower via fastembed (512-d, L2-normalised)."""

    name = "clip-vit-b-32"
    dim = 512
    default_threshold = 0.98   # the seed's CLIP threshold
    input_size = 224
    description = "CLIP ViT-B/32 image tower via fastembed (ONNX; downloads once or reads NEARDUP_CLIP_DIR)"

    def __init__(self, *, model_dir: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None) -> None:
        md = model_dir or os.environ.get(ENV_DIR)
        self.model_dir = Path(md).expanduser() if md else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    def _local_dir_problem(self) -> str | None:
        assert self.model_dir is not None
        missing = [f for f in ("model.onnx", "preprocessor_config.json") if not (self.model_dir / f).is_file()]
        if missing:
            return f"{self.model_dir} lacks {', '.join(missing)} (set {ENV_DIR} to a folder holding both)"
        return None

    def availability(self) -> Availability:
        if self.model_dir is not None:
            problem = self._local_dir_problem()
            return Availability(problem is None, problem or f"local copy in {self.model_dir}")
        if _cached(self.cache_dir):
            return Availability(True, f"cached in {self.cache_dir}")
        return Availability(False, f"not downloaded: needs the Hugging Face hub once (or {ENV_DIR}=<folder with model.onnx>)")

    def _load(self) -> Any:
        try:
            from fastembed import ImageEmbedding
        except ImportError:
            raise InputError(f"model {self.name}: needs fastembed (pip install 'neardup[clip]')") from None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = dict(model_name=FASTEMBED_NAME, cache_dir=str(self.cache_dir), threads=self.threads)
        if self.model_dir is not None:
            problem = self._local_dir_problem()
            if problem:
                raise InputError(f"model {self.name}: {problem}")
            offline = True
            kwargs["specific_model_path"] = str(self.model_dir)
        elif _cached(self.cache_dir):
            offline = True
        elif hub_reachable():
            offline = False
        else:
            raise InputError(
                f"model {self.name}: no local copy and the Hugging Face hub is unreachable — download it once on a "
                f"connected machine (it lands in {self.cache_dir}; copy that folder, or set {ENV_CACHE}), or set "
                f"{ENV_DIR} to a folder with model.onnx + preprocessor_config.json; or use the bundled offline model `sscd`"
            )
        old = os.environ.get("HF_HUB_OFFLINE")
        if offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            return ImageEmbedding(**kwargs)
        except Exception as exc:  # fastembed raises ValueError / OSError with long messages
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"model {self.name}: could not load ({first})") from None
        finally:
            if offline:
                if old is None:
                    os.environ.pop("HF_HUB_OFFLINE", None)
                else:
                    os.environ["HF_HUB_OFFLINE"] = old

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self._model

    def prepare(self, image: Image.Image) -> Image.Image:
        # fastembed does its own resize / centre-crop / normalisation; we hand it upright RGB,
        # already shrunk so that its preprocessing is cheap.
        from PIL import Image

        image = image if image.mode == "RGB" else image.convert("RGB")
        w, h = image.size
        s = 2 * self.input_size / max(1, min(w, h))
        if s < 1:
            image = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        return image

    def embed_prepared(self, batch: Sequence[Image.Image]) -> np.ndarray:
        import numpy as np

        if len(batch) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        vecs = list(self.model.embed(list(batch), batch_size=len(batch)))
        out = np.stack(vecs).astype(np.float32)
        if out.shape[1] != self.dim:
            raise InputError(f"model {self.name}: produced {out.shape[1]}-d vectors, expected {self.dim}")
        return l2_normalise(out)
