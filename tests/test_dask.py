"""Solves on ``dask.array`` inputs: on a distributed cluster started here,
iterates equal to SciPy's, a graph that does not grow with the iteration
count and an ``A`` larger than one worker's memory; on Dask's synchronous
scheduler (the same graphs, without a cluster's latency per round trip, which
on two shared cores costs tens of milliseconds), blocks of right-hand sides, a
LinearOperator, gradients by `lsqdiff.vjp` and the errors for operands of
mixed frameworks."""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff

da = pytest.importorskip("dask.array",
                         reason="dask is not installed (pip install 'dask[distributed]')")
distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
spla = pytest.importorskip("scipy.sparse.linalg", reason="the reference is SciPy's lsmr/lsqr")
from lsqdiff.backends.dask import LOOKAHEAD  # noqa: E402  (needs dask)

#: Each worker's memory limit; ``A`` in `test_larger_than_a_worker` exceeds it.
WORKER_MEMORY = 8 * 2**20


@pytest.fixture(scope="module")
def client():
    """Two in-process workers with a small memory limit. They spill stored
    chunks to disk above 60% of it; the process-memory checks (pause,
    terminate) are off, since in-process workers see the whole test process."""
    import dask

    with dask.config.set({"distributed.worker.memory.spill": False,
                          "distributed.worker.memory.pause": False,
                          "distributed.worker.memory.terminate": False}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                           memory_limit=WORKER_MEMORY, dashboard_address=":0")
        with cluster, distributed.Client(cluster) as c:
            yield c


def _problem(m=48, n=8, seed=0):
    """A well-conditioned tall problem (LSMR converges in about ten iterations)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)), rng.standard_normal(m)


@pytest.mark.parametrize("solver, reference, damp", [(lsqdiff.lsmr, spla.lsmr, 0.0),
                                                     (lsqdiff.lsqr, spla.lsqr, 0.5)])
def test_equals_scipy(client, solver, reference, damp):
    """Row-chunked A on two workers: SciPy's iterate, stop code and iteration count."""
    A, b = _problem()
    x, info = solver(da.from_array(A, chunks=(16, 8)), da.from_array(b, chunks=16),
                     damp=damp, atol=1e-10, btol=1e-10)
    ref = reference(A, b, damp=damp, atol=1e-10, btol=1e-10)
    assert isinstance(x, da.Array)
    assert (info.istop, info.itn) == (ref[1], ref[2])
    np.testing.assert_allclose(x.compute(), ref[0], rtol=1e-10, atol=1e-12)


def test_worker_processes():
    """Workers in processes of their own, as on a real cluster: the fused
    iteration's tasks reach them pickled, and the result is still SciPy's."""
    A, b = _problem(96, 8, seed=5)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        x, info = lsqdiff.lsmr(da.from_array(A, chunks=(24, 8)), da.from_array(b, chunks=24),
                               atol=1e-10, btol=1e-10)
        ref = spla.lsmr(A, b, atol=1e-10, btol=1e-10)
        assert (info.istop, info.itn) == (ref[1], ref[2])
        assert info.itn > 2  # past the two built iterations: the fused graph ran
        np.testing.assert_allclose(x.compute(), ref[0], rtol=1e-10, atol=1e-12)


@pytest.fixture
def sync():
    import dask

    with dask.config.set(scheduler="sync"):
        yield


def test_no_iteration(sync):
    """maxiter = 0 never enters the loop: its diagnostics come back as host values."""
    A, b = _problem()
    x, info = lsqdiff.lsqr(da.from_array(A, chunks=(16, 8)), da.from_array(b, chunks=16),
                           maxiter=0)
    ref = spla.lsqr(A, b, iter_lim=0)
    assert (info.istop, info.itn, info.converged) == (7, 0, False)
    np.testing.assert_allclose(x.compute(), ref[0])
    assert info.normr == pytest.approx(ref[3], rel=1e-12)


def test_block_columns_and_operator(sync):
    """A block of right-hand sides, A chunked by rows and columns, and a
    LinearOperator over Dask arrays, all against NumPy's solve."""
    A, b = _problem(seed=1)
    B = np.stack([b, -2 * b + 1], axis=1)
    Ad = da.from_array(A, chunks=(16, 4))
    X, info = lsqdiff.lsmr(Ad, da.from_array(B, chunks=(16, 1)), atol=1e-12, btol=1e-12)
    np.testing.assert_allclose(X.compute(), np.linalg.lstsq(A, B, rcond=None)[0], rtol=1e-9)
    op = lsqdiff.LinearOperator(A.shape, lambda v: Ad @ v, lambda u: Ad.T @ u)
    x, info = lsqdiff.lsmr(op, da.from_array(b, chunks=16), atol=1e-12, btol=1e-12)
    assert info.converged
    np.testing.assert_allclose(x.compute(), np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-9)


def test_graph_does_not_grow(client, monkeypatch):
    """Every iteration after the second resubmits the fused graph of the second:
    a graph of one size each time, of few tasks (per row chunk of A, its
    products and vector updates in two tasks), reaching back no further than
    the previous iteration's results."""
    import dask
    from dask._task_spec import Task

    graphs = []
    persist = dask.persist

    def recording(*args, **kwargs):
        graph = {}
        for a in args:
            for c in a.values() if isinstance(a, dict) else [a]:
                graph.update(c.__dask_graph__())
        graphs.append(graph)
        return persist(*args, **kwargs)

    monkeypatch.setattr(dask, "persist", recording)
    A, b = _problem()
    Ad, bd = da.from_array(A, chunks=(16, 8)).persist(), da.from_array(b, chunks=16).persist()
    graphs.clear()
    lsqdiff.lsmr(Ad, bd, atol=0, btol=0, conlim=0, maxiter=8)
    # The initial state, two iterations built by the solver, the first fused one
    # (which reads the second's arrays); the last persist makes the result.
    steps = graphs[4:-1]
    assert len(steps) == 8 + LOOKAHEAD - 3
    assert len({len(g) for g in steps}) == 1
    previous = set(graphs[3])
    for g in steps:
        # the previous iteration's results and A's chunks, nothing older
        assert {k for k, v in g.items() if not isinstance(v, Task)} <= previous | set(
            dict(Ad.__dask_graph__()))
        previous = set(g)
        # A in 3 row chunks: 2 tasks per chunk, 2 for the norm of u and the
        # vectors of length n, 1 for the scalars the client fetches.
        assert sum(isinstance(v, Task) for v in g.values()) == 2 * 3 + 3


@pytest.mark.parametrize("solver", [lsqdiff.lsmr, lsqdiff.lsqr])
def test_fused_equals_built(sync, monkeypatch, solver):
    """The fused graph runs the same operations as the one built per iteration:
    the same iterates, bit for bit."""
    from lsqdiff.backends import dask as dask_backend

    A, b = _problem(seed=4)
    Ad, bd = da.from_array(A, chunks=(16, 8)), da.from_array(b, chunks=16)
    out = []
    for fuse in (False, True):
        monkeypatch.setattr(dask_backend, "FUSE", fuse)
        x, info = solver(Ad, bd, damp=0.1, atol=0, btol=0, conlim=0, maxiter=9)
        out.append((x.compute(), info.istop, info.itn, info.normr, info.normar))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1:] == out[1][1:]


def test_round_trips(sync, monkeypatch):
    """One fetch per iteration: the state's scalars, together."""
    import dask
    import dask.base

    calls = []
    compute = dask.base.compute

    def counting(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(dask.base, "compute", counting)
    monkeypatch.setattr(dask, "compute", counting)
    A, b = _problem()
    Ad, bd = da.from_array(A, chunks=(16, 8)), da.from_array(b, chunks=16)
    counts = []
    for maxiter in (2, 5):
        calls.clear()
        lsqdiff.lsmr(Ad, bd, atol=0, btol=0, conlim=0, maxiter=maxiter)
        counts.append(len(calls))
    assert (counts[1] - counts[0]) == 3


@pytest.mark.parametrize("dtype", [np.complex128, np.float32])
def test_complex_and_single(sync, dtype):
    """The deferred scalars keep a complex solve SciPy's and a float32 one in float32."""
    A, b = _problem(seed=5)
    if dtype == np.complex128:
        A, b = A + 1j * np.roll(A, 1, axis=0), b - 0.5j * b[::-1]
    A, b = A.astype(dtype), b.astype(dtype)
    x, info = lsqdiff.lsqr(da.from_array(A, chunks=(16, 8)), da.from_array(b, chunks=16),
                           damp=0.1, atol=1e-6, btol=1e-6)
    ref = spla.lsqr(A, b, damp=0.1, atol=1e-6, btol=1e-6)
    assert x.dtype == dtype and isinstance(info.istop, int)
    assert (info.istop, info.itn) == (ref[1], ref[2])
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(x.compute(), ref[0], rtol=tol, atol=tol * 0.1)


def test_larger_than_a_worker(client):
    """A is 1.5 times one worker's memory limit: created on the workers, it is
    spread over both (and spilled to disk past 60% of a limit); the solve
    completes with SciPy's result."""
    n = 64
    m = int(1.5 * WORKER_MEMORY / (8 * n))
    A = da.random.default_rng(3).standard_normal((m, n), chunks=(m // 8, n)).persist()
    b = da.random.default_rng(4).standard_normal(m, chunks=m // 8)
    assert A.nbytes > WORKER_MEMORY
    x, info = lsqdiff.lsmr(A, b, atol=1e-8, btol=1e-8, maxiter=25)
    ref = spla.lsmr(A.compute(), b.compute(), atol=1e-8, btol=1e-8, maxiter=25)
    assert info.itn == ref[2]
    np.testing.assert_allclose(x.compute(), ref[0], rtol=1e-9, atol=1e-12)
    spilled = client.run(lambda dask_worker: len(dask_worker.data.slow))
    assert sum(spilled.values()) > 0, "A fitted in the workers' memory: the test tests nothing"


def test_vjp_gradient(sync):
    """The manual pullback on Dask arrays: the gradient of b equals NumPy's."""
    A, b = _problem(24, 4, seed=2)
    w = np.linspace(-1, 1, 4)
    kw = dict(atol=1e-12, btol=1e-12)
    (x, _), pullback = lsqdiff.vjp(lsqdiff.lsmr, da.from_array(A, chunks=(8, 4)),
                                   da.from_array(b, chunks=8), **kw)
    g = pullback(da.from_array(w, chunks=4))
    (_, _), pullback_np = lsqdiff.vjp(lsqdiff.lsmr, A, b, **kw)
    g_np = pullback_np(w)
    np.testing.assert_allclose(np.asarray(g.b), g_np.b, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.A.todense()), g_np.A.todense(), rtol=1e-8, atol=1e-12)


def test_mixed_operands_and_chunks(sync):
    """NumPy with Dask operands is an error naming the argument; b and x0 with
    chunks unlike A's are rechunked to A's (documented), with the same result."""
    A, b = _problem()
    Ad, bd = da.from_array(A, chunks=(16, 8)), da.from_array(b, chunks=16)
    with pytest.raises(TypeError, match="A and b come from different array frameworks"):
        lsqdiff.lsmr(A, bd)
    with pytest.raises(TypeError, match="A and b come from different array frameworks"):
        lsqdiff.lsmr(Ad, b)
    with pytest.raises(TypeError, match="x0 and b come from different array frameworks"):
        lsqdiff.lsmr(Ad, bd, x0=np.zeros(8))
    x0 = np.full(8, 0.1)
    x, info = lsqdiff.lsmr(Ad, da.from_array(b, chunks=17), x0=da.from_array(x0, chunks=3),
                           atol=1e-10, btol=1e-10)
    ref = spla.lsmr(A, b, x0=x0, atol=1e-10, btol=1e-10)
    assert info.itn == ref[2]
    np.testing.assert_allclose(x.compute(), ref[0], rtol=1e-10, atol=1e-12)


def _sum(*args):
    return sum(args)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_groups_are_a_valid_fusion():
    """On random graphs the fusion keeps every task once, runs each group in
    an order that sees its dependencies first, leaves no cycle between groups,
    and never puts two chunks of one layer into one group; running the groups
    gives every task's value."""
    from hypothesis import given, settings, strategies as st
    from dask._task_spec import Task, TaskRef

    import pickle
    import uuid

    from lsqdiff.backends._dask_template import _Picks, _Program, _run_group, group_tasks

    @st.composite
    def graphs(draw):
        nodes = {}
        for i in range(draw(st.integers(1, 25))):
            layer = draw(st.sampled_from("abcd"))
            key = (layer, i)
            deps = draw(st.lists(st.sampled_from(list(nodes)), max_size=3, unique=True)) \
                if nodes else []
            nodes[key] = Task(key, _sum, i, *(TaskRef(d) for d in deps))
        return nodes

    @settings(max_examples=60, deadline=None)
    @given(graphs())
    def check(nodes):
        groups = group_tasks(nodes, set())
        assert sorted(k for g in groups for k in g) == sorted(nodes)
        group_of = {k: i for i, g in enumerate(groups) for k in g}
        edges = {i: {group_of[d] for k in g for d in nodes[k].dependencies} - {i}
                 for i, g in enumerate(groups)}
        program = _Program(uuid.uuid4().hex, pickle.dumps(
            [(tuple(nodes[k] for k in g), tuple(g)) for g in groups]))
        done, values = set(), {}
        while len(done) < len(groups):  # run groups whose inputs are ready: no cycle
            ready = [i for i in edges if i not in done and edges[i] <= done]
            assert ready, "the groups depend on one another in a cycle"
            for i in ready:
                layers = [k[0] for k in groups[i]]
                multi = [x for x in layers if sum(k[0] == x for k in nodes) > 1]
                assert len(multi) == len(set(multi)), "two chunks of a layer in one group"
                outside = sorted({d for k in groups[i] for d in nodes[k].dependencies}
                                 - set(groups[i]))
                out = _run_group(program, i, tuple(_Picks(((d, d),)) for d in outside),
                                 *({d: values[d]} for d in outside))
                values.update(out)
                done.add(i)
        for k, node in nodes.items():  # each task's value: its index plus its inputs'
            assert values[k] == k[1] + sum(values[d] for d in node.dependencies)

    check()
