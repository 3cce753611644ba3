"""onnxruntime's GEMM kernels for the exact pass: the int8 product and small float32 tiles.

Two one-node ONNX models, written here as protobuf bytes (the ``onnx`` package is only a dev
dependency):

* ``MatMulInteger``: ``(A - 128) @ B`` with A uint8, B int8, int32 out -- exact (integer
  arithmetic; VNNI kernels where the CPU has them);
* ``Gemm`` with ``transB=1``: ``A @ B.T`` in float32 -- on canonical vectors every float32 dot
  product is exact whatever the kernel (see :mod:`.canonical`). onnxruntime keeps its speed on
  128-row tiles, where this machine's OpenBLAS loses 2-10x per pair to threading overhead.

Sessions are cached per shape family and thread count; their idle workers do not spin (the
compiled scans run on the same cores right after).
"""

from __future__ import annotations

import functools
import os

import numpy as np

UINT8, INT8, INT32, FLOAT = 2, 3, 6, 1  # onnx TensorProto data types


def _varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(num: int, value: int | bytes | str) -> bytes:
    """One protobuf field: a varint for int, length-delimited for bytes/str."""
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, elem_type: int, dims: list) -> bytes:
    shape = b"".join(_field(1, _field(1, d) if isinstance(d, int) else _field(2, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, elem_type) + _field(2, shape)))


def _model(node: bytes, inputs: list[bytes], output: bytes, initializers: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    graph = _field(1, node) + _field(2, "g") + b"".join(_field(5, t) for t in initializers)
    graph += b"".join(_field(11, i) for i in inputs) + _field(12, output)
    return _field(1, 8) + _field(7, graph) + _field(8, _field(1, "") + _field(2, 13))  # ir 8, opset 13


def matmul_integer_model(k: int) -> bytes:
    """ONNX model bytes: ``Y[M, N] = (A[M, k] - 128) @ B[k, N]``, A uint8, B int8, Y int32 (exact)."""
    zero_point = _field(2, UINT8) + _field(8, "azp") + _field(9, bytes([128]))  # a uint8 scalar
    node = _field(1, "A") + _field(1, "B") + _field(1, "azp") + _field(2, "Y") + _field(4, "MatMulInteger")
    return _model(node, [_value_info("A", UINT8, ["M", k]), _value_info("B", INT8, [k, "N"])],
                  _value_info("Y", INT32, ["M", "N"]), [zero_point])


def gemm_nt_model(k: int) -> bytes:
    """ONNX model bytes: ``Y[M, N] = A[M, k] @ B[N, k].T`` in float32 (``Gemm``, transB=1)."""
    trans_b = _field(1, "transB") + _field(3, 1) + _field(20, 2)  # AttributeProto: name, i, type INT
    node = _field(1, "A") + _field(1, "B") + _field(2, "Y") + _field(4, "Gemm") + _field(5, trans_b)
    return _model(node, [_value_info("A", FLOAT, ["M", k]), _value_info("B", FLOAT, ["N", k])],
                  _value_info("Y", FLOAT, ["M", "N"]))


@functools.lru_cache(maxsize=16)
def _session(kind: str, k: int, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_cpu_mem_arena = False  # the arena keeps every size it served (~150 MB at 100k); the outputs are ours
    model = matmul_integer_model(k) if kind == "int8" else gemm_nt_model(k)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _threads(threads: int | None) -> int:
    return int(threads) if threads else max(1, os.cpu_count() or 1)


def _run(sess, a: np.ndarray, b: np.ndarray, out: np.ndarray | None, dtype: type) -> np.ndarray:  # type: ignore[no-untyped-def]
    if out is None:
        return sess.run(None, {"A": a, "B": b})[0]
    if not (out.flags.c_contiguous and out.dtype == dtype):
        raise ValueError("out must be a C-contiguous array of the result's dtype")
    io = sess.io_binding()
    io.bind_cpu_input("A", a)
    io.bind_cpu_input("B", b)
    io.bind_output("Y", "cpu", 0, dtype, list(out.shape), out.ctypes.data)
    sess.run_with_iobinding(io)
    return out


def int8_gemm(a_u8: np.ndarray, b_s8: np.ndarray, threads: int | None = None, out: np.ndarray | None = None
              ) -> np.ndarray:
    """Exact ``(a_u8 - 128) @ b_s8`` as int32 (``MatMulInteger``; C-contiguous inputs), into ``out`` if given."""
    return _run(_session("int8", int(a_u8.shape[1]), _threads(threads)), a_u8, b_s8, out, np.int32)


def gemm_nt(a: np.ndarray, b: np.ndarray, threads: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b.T`` in float32 (C-contiguous float32 inputs), into ``out`` if given; exact on canonical vectors."""
    return _run(_session("f32", int(a.shape[1]), _threads(threads)), a, b, out, np.float32)


__all__ = ["gemm_nt", "gemm_nt_model", "int8_gemm", "matmul_integer_model"]
