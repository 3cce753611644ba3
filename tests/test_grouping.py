"""Grouping modes: constructed chains, an independent brute-force reference, hypothesis properties, dedup + CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import all_pair_sims, same_partition

from neardup import Catalog, InputError
from neardup.dedup import dedup
from neardup.grouping import MODES, default_grouping, group_nodes
from neardup.ingest import import_embeddings
from neardup.similarity.forest import SimilarityForest

SCALE = 2.0 ** -16  # integer vectors * 2^-8: every dot product is an integer * 2^-16, exact in float32 and float64


# ------------------------------------------------------------------------------------------------
# the independent reference: dense float64 similarities, BFS components, Prim's maximum spanning tree
# ------------------------------------------------------------------------------------------------
def ref_components(S: np.ndarray, t: float) -> list[list[int]]:
    n = len(S)
    seen = np.zeros(n, bool)
    out = []
    for s in range(n):
        if seen[s]:
            continue
        comp, todo = [], [s]
        seen[s] = True
        while todo:
            v = todo.pop()
            comp.append(v)
            for w in np.flatnonzero((S[v] >= t) & ~seen):
                if w != v:
                    seen[w] = True
                    todo.append(int(w))
        out.append(sorted(comp))
    return out


def ref_split(S: np.ndarray, members: list[int], rank: np.ndarray, bound: float) -> list[list[int]]:
    """Split ``members`` at the weakest edge of their maximum spanning tree until each part is within bound of its master."""
    master = min(members, key=lambda i: rank[i])
    if len(members) == 1 or all(S[master, j] >= bound for j in members if j != master):
        return [sorted(members)]
    # Prim: maximum spanning tree of the complete graph on members
    inside = [members[0]]
    rest = set(members[1:])
    edges = []
    while rest:
        a, b = max(((x, y) for x in inside for y in rest), key=lambda e: S[e[0], e[1]])
        edges.append((S[a, b], a, b))
        inside.append(b)
        rest.remove(b)
    edges.sort()
    weakest = edges[0]
    adj: dict[int, list[int]] = {v: [] for v in members}
    for _, a, b in edges[1:]:
        adj[a].append(b)
        adj[b].append(a)
    part, todo = {weakest[1]}, [weakest[1]]
    while todo:
        v = todo.pop()
        for w in adj[v]:
            if w not in part:
                part.add(w)
                todo.append(w)
    other = [v for v in members if v not in part]
    return ref_split(S, sorted(part), rank, bound) + ref_split(S, other, rank, bound)


def ref_bounded(S: np.ndarray, t: float, bound: float, rank: np.ndarray) -> np.ndarray:
    labels = np.empty(len(S), np.int64)
    k = 0
    for comp in ref_components(S, t):
        for part in ref_split(S, comp, rank, bound):
            labels[part] = k
            k += 1
    return labels


def full_forest(V: np.ndarray, floor: float) -> SimilarityForest:
    """The maximum spanning forest of every pair >= floor (all pairs listed: no pass of neardup's)."""
    i, j = np.triu_indices(len(V), 1)
    w = np.einsum("ij,ij->i", V[i].astype(np.float64), V[j].astype(np.float64)).astype(np.float32)
    return SimilarityForest.from_edges(len(V), i, j, w, floor)


# ------------------------------------------------------------------------------------------------
# constructed chains
# ------------------------------------------------------------------------------------------------
def chain_vectors() -> np.ndarray:
    """A at 0°, B at 20°, C at 45° on a circle: A~B 0.940, B~C 0.906, A~C 0.707."""
    ang = np.radians([0.0, 20.0, 45.0])
    return np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)


@pytest.mark.parametrize("master", [0, 1, 2])
def test_chain_one_group_under_components_split_under_bounded(master):
    V = chain_vectors()
    order = [master] + [i for i in range(3) if i != master]
    rank = np.empty(3, np.int64)
    rank[order] = np.arange(3)            # a permutation: the master policy's rank
    f = full_forest(V, 0.5)
    comp = group_nodes(f, V, 0.9, rank, "components")
    assert len(set(comp.labels.tolist())) == 1 and comp.master.tolist() == [master] * 3
    assert not comp.split_groups().any()
    b = group_nodes(f, V, 0.9, rank, "bounded", 0.8)
    if master == 1:
        # B in the middle is within 0.8 of both ends (0.940, 0.906): nothing to split
        assert len(set(b.labels.tolist())) == 1 and b.master.tolist() == [1, 1, 1]
        assert not b.split_groups().any()
        return
    # with an end as master, A~C = 0.707 < 0.8: the chain is cut at its weakest link B~C: {A, B} and {C}
    assert b.labels[0] == b.labels[1] != b.labels[2]
    ab_master = 0 if rank[0] < rank[1] else 1
    assert b.master.tolist() == [ab_master, ab_master, 2]
    assert b.split_groups().all()
    assert b.sim[2] == 1.0 and b.sim[ab_master] == 1.0
    assert b.sim[1 - ab_master] == pytest.approx(np.cos(np.radians(20)), abs=1e-6)
    # a bound the whole chain meets leaves it whole
    whole = group_nodes(f, V, 0.9, rank, "bounded", 0.7)
    assert len(set(whole.labels.tolist())) == 1 and not whole.split_groups().any()


def test_leader_and_components_modes_unchanged_by_the_move():
    V = chain_vectors()
    f = full_forest(V, 0.5)
    lead = group_nodes(f, V, 0.9, np.array([0, 1, 2]), "leader")
    # A takes B (0.940); C (0.707 to A) becomes its own leader
    assert lead.master.tolist() == [0, 0, 2]
    assert set(MODES) == {"components", "bounded", "leader"}


# ------------------------------------------------------------------------------------------------
# brute-force reference and properties
# ------------------------------------------------------------------------------------------------
def int_vectors(seed: int, n: int, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(-100, 101, size=(max(1, n // 4), d))
    X = base[rng.integers(0, len(base), n)] + rng.integers(-25, 26, size=(n, d))  # clusters with spread: chains
    return np.clip(X, -100, 100).astype(np.float32) / 256.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 14), t_int=st.integers(2000, 30000), db_int=st.integers(0, 30000))
def test_bounded_equals_bruteforce_reference(seed, n, t_int, db_int):
    V = int_vectors(seed, n)
    S = V.astype(np.float64) @ V.T.astype(np.float64)
    t = (t_int + 0.5) * SCALE        # between two representable dot products: no ties at t or at the bound
    bound = min(1.0, (t_int - 15000 + db_int + 0.5) * SCALE)
    assume(bound > 0)
    iu = np.triu_indices(n, 1)
    above = S[iu][S[iu] >= t]
    assume(len(np.unique(above)) == len(above))  # distinct edge weights: the weakest link is unique
    rank = np.random.default_rng(seed + 1).permutation(n)
    f = full_forest(V, min(t, 0.01))
    got = group_nodes(f, V, t, rank, "bounded", bound)
    want = ref_bounded(S, t, bound, rank)
    assert same_partition(got.labels, want)
    for g in np.unique(want):
        mem = np.flatnonzero(want == g)
        m = mem[np.argmin(rank[mem])]
        assert set(got.master[mem].tolist()) == {int(m)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), t_int=st.integers(3000, 30000), gap=st.integers(-8000, 20000))
def test_bounded_refines_components_and_keeps_every_member_within_bound(seed, n, t_int, gap):
    V = int_vectors(seed, n)
    S = V.astype(np.float64) @ V.T.astype(np.float64)
    t = (t_int + 0.5) * SCALE
    bound = min(1.0, max(SCALE, (t_int + gap + 0.5) * SCALE))
    rank = np.random.default_rng(seed).permutation(n)
    f = full_forest(V, min(t, 0.01))
    comp = group_nodes(f, V, t, rank, "components")
    b = group_nodes(f, V, t, rank, "bounded", bound)
    for g in np.unique(b.labels):
        mem = np.flatnonzero(b.labels == g)
        assert len(set(comp.labels[mem].tolist())) == 1                       # refines components
        m = mem[np.argmin(rank[mem])]
        assert (b.master[mem] == m).all()                                      # master = best-ranked member
        assert (S[m, mem[mem != m]] >= bound).all()                            # every member within bound
        assert len(ref_components(S[np.ix_(mem, mem)], t)) == 1               # connected at t (a subtree)
    assert (b.split_groups() == (np.bincount(b.labels, minlength=n)[b.labels]
                                 < np.bincount(comp.labels, minlength=n)[comp.labels])).all()
    # a bound below every similarity changes nothing; sims to master are the real dot products
    low = group_nodes(f, V, t, rank, "bounded", SCALE) if S.min() >= SCALE else comp
    assert same_partition(low.labels, comp.labels)
    nm = b.master != np.arange(n)
    np.testing.assert_allclose(b.sim[nm], S[np.arange(n), b.master][nm], atol=1e-6)
    assert (b.sim[~nm] == 1.0).all()                                           # a master's own similarity


# ------------------------------------------------------------------------------------------------
# through dedup and the CLI
# ------------------------------------------------------------------------------------------------
def load_chain(db) -> list[str]:
    ids = ["a", "b", "c", "x"]
    V = np.vstack([chain_vectors(), [[0.0, -1.0]]]).astype(np.float32)
    with Catalog(db) as cat:
        import_embeddings(cat, V, ids, meta=pa.table({"id": ids, "score": pa.array([3.0, 2.0, 1.0, 0.0])}))
    return ids


def test_dedup_bounded_splits_and_says_so(db):
    load_chain(db)
    S = all_pair_sims(np.vstack([chain_vectors(), [[0.0, -1.0]]]))  # the stored (canonical) vectors' exact dots
    with Catalog(db) as cat:
        comp = dedup(cat, 0.9, mode="components", dry_run=True)
        bnd = dedup(cat, 0.9, mode="bounded", bound=0.8)
        runs = cat.runs()
    assert comp.summary["groups"] == 1 and comp.summary["largest_groups"][0]["size"] == 3
    assert comp.summary["largest_groups"][0]["split"] is False
    assert comp.summary["largest_groups"][0]["min_sim_to_master"] == pytest.approx(S[0, 2], abs=1e-6)
    s = bnd.summary
    assert s["mode"] == "bounded" and s["bound"] == 0.8 and s["groups"] == 1 and s["split_groups"] == 1
    g = s["largest_groups"][0]
    assert g["size"] == 2 and g["master_id"] == "a" and g["split"] is True and g["chain_size"] == 3
    assert g["min_sim_to_master"] == pytest.approx(S[0, 1], abs=1e-6)
    assert g["weakest_link"] == pytest.approx(S[0, 1], abs=1e-6)
    m = {r["image_id"]: r for r in bnd.members.to_pylist()}
    assert m["b"]["master_id"] == "a" and m["b"]["is_suppressed"] and not m["c"]["is_suppressed"]
    assert runs[0]["mode"] == "bounded"


def test_default_grouping_rules():
    assert default_grouping("precomputed") == ("components", None)       # unknown model: the seed's rule
    assert default_grouping("precomputed", "leader") == ("leader", None)
    assert default_grouping("precomputed", "bounded", 0.9) == ("bounded", 0.9)
    with pytest.raises(InputError, match="needs --bound"):
        default_grouping("precomputed", "bounded")
    with pytest.raises(InputError, match="outside"):
        default_grouping("precomputed", "bounded", 1.5)
    with pytest.raises(InputError, match="mode"):
        default_grouping("precomputed", "chains")


def _catalog_state(db):
    with Catalog(db) as cat:
        return [dict(r) for r in cat.runs()], cat.images(["id", "is_suppressed"]).to_pylist()


@pytest.mark.parametrize("args,needle", [
    (["--mode", "bounded", "--bound", "1.2"], "bound 1.2 is outside (0, 1]"),
    (["--mode", "components", "--bound", "0.8"], "--bound applies to mode bounded"),
    (["--mode", "bounded"], "needs --bound"),
])
def test_cli_bad_bound_one_line_exit_2_catalog_unchanged(db, args, needle, capsys):
    from neardup.cli.typer_app import main

    load_chain(db)
    before = _catalog_state(db)
    with pytest.raises(SystemExit) as exc:
        main(["dedup", "-t", "0.9", *args, "--db", str(db)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len([x for x in err.splitlines() if x.strip()]) == 1, err
    assert _catalog_state(db) == before


def test_cli_bounded_prints_span_and_split(db):
    from typer.testing import CliRunner

    from neardup.cli import app

    load_chain(db)
    ab = all_pair_sims(chain_vectors())[0, 1]  # the stored (canonical) vectors' exact similarity of A and B
    r = CliRunner().invoke(app, ["dedup", "-t", "0.9", "--mode", "bounded", "--bound", "0.8", "--dry-run", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "mode bounded (bound 0.8)" in r.output
    assert f"span {ab:.4f}" in r.output and "split from a chain of 3" in r.output
    r = CliRunner().invoke(app, ["dedup", "-t", "0.9", "--mode", "components", "--dry-run", "--json", "--db", str(db)])
    s = json.loads(r.output.strip().splitlines()[-1])
    assert s["largest_groups"][0]["split"] is False and s["bound"] is None
