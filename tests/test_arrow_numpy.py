"""arrow_numpy builds and reads Arrow arrays from their buffers; pyarrow's own conversions (which
import pandas) are the reference: same type, same values, same nulls."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from neardup.arrow_numpy import from_numpy, from_strings, to_float64

DTYPES = [np.bool_, np.int8, np.int32, np.int64, np.uint16, np.float32, np.float64]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_from_numpy_is_pa_array(data: st.DataObject, dtype: type) -> None:
    values = data.draw(hnp.arrays(dtype, st.integers(0, 70)))
    null = data.draw(st.one_of(st.none(), hnp.arrays(np.bool_, len(values))))
    got = from_numpy(values, null=null)
    ref = pa.array(values, mask=null)
    got.validate(full=True)
    assert got.type == ref.type and got.null_count == ref.null_count
    assert [repr(v) for v in got.to_pylist()] == [repr(v) for v in ref.to_pylist()]  # NaN equal to NaN here


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=8)), max_size=50))
def test_from_strings_is_pa_array(values: list[str | None]) -> None:
    got = from_strings(values)
    got.validate(full=True)
    assert got.equals(pa.array(values, pa.string()))
    assert got.to_pylist() == values


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-2**40, 2**40), st.booleans()),
                max_size=40).filter(lambda v: len({type(x) for x in v if x is not None}) <= 1),
       st.integers(1, 4), st.integers(0, 3))
def test_to_float64_is_to_numpy(values: list, n_chunks: int, skip: int) -> None:
    # chunked and sliced (a chunk that starts at an offset into its buffers), with nulls
    arr = pa.array(values)
    cut = np.linspace(0, len(values), n_chunks + 1).astype(int)
    col = pa.chunked_array([arr.slice(a, b - a) for a, b in zip(cut[:-1], cut[1:])], type=arr.type)
    col = col.slice(min(skip, len(col)))
    got = to_float64(col)
    ref = np.array([np.nan if v is None else float(v) for v in col.to_pylist()])
    np.testing.assert_array_equal(got, ref)


def test_from_numpy_refuses_what_it_cannot_build() -> None:
    with pytest.raises(TypeError):
        from_numpy(np.array(["a", "b"], dtype=object))
    with pytest.raises(ValueError):
        from_numpy(np.zeros((2, 2)))


def test_dedup_members_table_unchanged_by_the_buffers(tmp_path) -> None:
    # the run-members table a dedup writes is what pyarrow's conversions gave (types and values)
    from neardup import Catalog
    from neardup.dedup import dedup

    rng = np.random.default_rng(3)
    V = rng.normal(size=(40, 8)).astype(np.float32)
    V[1::2] = V[0::2] + 0.01 * rng.normal(size=(20, 8)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.put_embeddings("m", [f"i{k:02d}" for k in range(40)], V)
        res = dedup(cat, 0.9, dry_run=True)
    m = res.members
    assert m.schema.field("image_id").type == pa.string() and m.schema.field("group_id").type == pa.int64()
    assert m.schema.field("is_master").type == pa.bool_() and m.schema.field("sim_to_master").type == pa.float32()
    assert m["group_score"].null_count == len(m)  # no scores in this catalog: every aggregate is missing
    ref = pa.table({c: pa.array(m[c].to_pylist(), m.schema.field(c).type) for c in m.column_names})
    assert m.equals(ref)
