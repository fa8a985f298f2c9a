"""PyTorch adapter: the solve as a ``torch.autograd.Function`` whose backward is
`lsqdiff._gradient.pullback`; torch sparse tensors; ``rmatvec`` derived by
``torch.func.vjp``."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.autograd import forward_ad

from .._terms import Terms
from .._scalars import ArrayScalars, HostArrayScalars
from .._vectors import NEW_ARRAYS, NewArrays
from ..operator import LinearOperator, MatVec, Operator, Scaled, narrow_columnwise
from ._base import Backend, State, norm_floor, plain_norm_ok, scaled_norm

if TYPE_CHECKING:
    from .._solve import Prepared


class TorchBackend(Backend):
    name = "torch"

    def solve_context(self) -> Any:
        return _quiet_no_grad()

    def array_scalars(self, scalars: ArrayScalars) -> tuple[Any, Callable[[Any], Any]]:
        # On the CPU a PyTorch operation on k numbers is microseconds of dispatch, and
        # an iteration makes about a hundred: NumPy's cost a fraction. On a GPU the
        # scalars stay tensors (no host sync per iteration), and so they do wherever
        # autograd records or a torch.func transform is active (they must carry
        # derivatives there). The solve's own Function runs its loop outside both.
        if (scalars.device.type != "cpu" or torch.is_grad_enabled()
                or torch._C._functorch.peek_interpreter_stack() is not None):
            return super().array_scalars(scalars)
        host = HostArrayScalars(np, _HOST_DTYPES[scalars.dtype], scalars.shape, scalars.tiny,
                                torch, _to_tensor, _to_host)
        return host, self._host_norms

    def _host_norms(self, v: Any) -> Any:
        """`array_norm` of a CPU tensor's columns, as a NumPy array."""
        r = torch.linalg.vector_norm(v, dim=0).numpy()
        ok = np.logical_and(r >= norm_floor(self.xp, v.dtype), r < math.inf)
        if ok.all():
            return r
        return np.where(ok, r, scaled_norm(self.xp, v).numpy())

    def differentiable(self, p: Prepared) -> State:
        A, b, x0, damp = p.args
        params = _parameters(A)
        # Always through the Function, which records nothing when no input requires
        # grad: forward-mode tangents (dual tensors, torch.func.jvp) reach _Solve.jvp
        # and torch.func.vmap _Solve.vmap, where the loop's Python-float scalars
        # would drop the one and reject the other.
        box = _Box()
        # Autograd will call backward: the forward carries what the gradient takes
        # from it (in forward mode the tangent does without, at one more solve).
        box.recording = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in (b, x0, damp, *params))
        x = _Solve.apply(p, box, b, x0, damp, *params)
        return {**box.state, "x": x}

    def carries_derivative(self, value: Any) -> bool:
        # requires_grad covers torch.func.grad's wrappers; a forward-mode dual
        # (torch.func.jvp, forward_ad) does not require grad but has a tangent.
        return value.requires_grad or forward_ad.unpack_dual(value).tangent is not None

    def vector_ops(self, S: Any) -> Any:
        if not S.batched:
            return _IN_PLACE
        # Several right-hand sides: new arrays, taking host scalars as tensors.
        return _HOST_BATCHED if isinstance(S, HostArrayScalars) else NEW_ARRAYS

    def constant(self, a: Any) -> Any:
        return a.detach()

    def parameters(self, A: Any, damp: Any) -> list[Any]:
        return _parameters(A) + ([damp] if isinstance(damp, torch.Tensor) else [])

    def internal_solver(self) -> Callable[..., tuple[Any, State]] | None:
        params = _ROUTE.get()
        return None if params is None else functools.partial(_internal_solve, params)

    def host_norm(self, v: Any) -> float:
        r = float(torch.linalg.vector_norm(v))
        if plain_norm_ok(r, torch, v.dtype):
            return r
        return float(scaled_norm(self.xp, v))

    def dense_operator(self, A: Any) -> Operator:
        if A.device.type != "cpu" or A.is_complex():
            return super().dense_operator(A)
        # How MKL on the CPU was fastest (docs/benchmarks.md): A^T U as (U^T A)^T
        # (a transposed view), 1.8-4.5x faster than A.mT @ U for 2-16 columns; A V
        # as (V^T A^T)^T from 4 columns, and column by column for 2 or 3.
        AT = A.mT
        matvec = narrow_columnwise(lambda v: A @ v if v.ndim == 1 else (v.mT @ AT).mT,
                                   GEMV_BELOW, self.xp)
        return Operator(tuple(A.shape), matvec,
                        lambda u: AT @ u if u.ndim == 1 else (u.mT @ A).mT)

    def is_sparse(self, A: Any) -> bool:
        return isinstance(A, torch.Tensor) and A.layout != torch.strided

    def sparse_operator(self, A: Any) -> Operator:
        if A.layout not in (torch.sparse_coo, torch.sparse_csr):
            raise TypeError(f"A: torch sparse layout {A.layout} is not supported; "
                            "use sparse_coo or sparse_csr")
        if A.layout == torch.sparse_coo:
            # COO products are ~25x slower than CSR on CPU (1e6 nonzeros: 22 ms vs 0.8 ms).
            A = A.coalesce().to_sparse_csr()
        AH = _csr_transpose(A)
        if AH.is_complex():
            AH = AH.conj_physical()
        return Operator(tuple(A.shape), lambda v: A @ v, lambda u: AH @ u)

    def sparse_column_norms2(self, A: Any) -> Any:
        coo = A.detach().to_sparse_coo().coalesce()
        values = coo.values().abs()
        out = torch.zeros(A.shape[1], dtype=values.dtype, device=values.device)
        return out.index_add_(0, coo.indices()[1], values * values)

    def derive_rmatvec(self, matvec: MatVec, shape: tuple[int, int], dtype: Any,
                       device: Any) -> MatVec:
        # The VJP of a linear map at any point is its adjoint; PyTorch's convention
        # for complex inputs already gives the conjugate transpose A^H u.
        _, pullback = torch.func.vjp(matvec, torch.zeros(shape[1], dtype=dtype, device=device))
        return lambda u: pullback(u)[0]

    def to_host(self, value: Any) -> Any:
        value = value.detach()
        if value.ndim == 0:
            return value.item()
        # tolist, not numpy(): under torch.func transforms tensors have no storage to view.
        return np.array(value.tolist(), dtype=str(value.dtype).removeprefix("torch."))


#: Products of a dense CPU A with blocks of fewer columns run column by column.
GEMV_BELOW = 4

#: The host dtype of the scalar recurrences (`lsqdiff._driver.real_dtype`).
_HOST_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _to_tensor(a: Any) -> Any:
    """A NumPy array as a CPU tensor sharing its memory; anything else as it is."""
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def _to_host(a: Any) -> Any:
    """A CPU tensor as a NumPy array sharing its memory (detached: only values
    cross); anything else as it is."""
    return a.detach().numpy() if isinstance(a, torch.Tensor) else a


@contextlib.contextmanager
def _quiet_no_grad() -> Iterator[None]:
    """No autograd recording, and IEEE inf/nan from NumPy without warnings
    (stopped columns run on in the host scalars)."""
    with torch.no_grad(), np.errstate(all="ignore"):
        yield


def _csr_transpose(A: Any) -> Any:
    """``A^T`` of a 2-D CSR tensor, as CSR (built once per solve for the rmatvec)."""
    if A.device.type != "cpu":
        return A.t().to_sparse_csr()  # CSR -> CSC view -> CSR
    # On CPU that conversion takes ~25 products (1e6 nonzeros, one thread); a stable
    # sort of the column indices gives the same tensor 1.5-3x faster.
    crow, col, values = A.crow_indices(), A.col_indices(), A.values()
    m, n = A.shape
    order = torch.argsort(col, stable=True)
    rows = torch.repeat_interleave(torch.arange(m, dtype=col.dtype), torch.diff(crow))
    crow_t = torch.zeros(n + 1, dtype=col.dtype)
    crow_t[1:] = torch.cumsum(torch.bincount(col, minlength=n), 0)
    return torch.sparse_csr_tensor(crow_t, rows[order], values[order], size=(n, m),
                                   check_invariants=False)


class _InPlace(NewArrays):
    """One right-hand side: the solver's own vectors are updated in place.

    On a CPU, `sweep` runs its updates on slices of ``chunk_bytes`` per
    vector, so that the slices of all the vectors stay in the cache between
    one update and the next; 2 MB keeps the four or five slices of a group
    within a shared L3 cache while each operation still has enough work to
    split across threads (at 512 KB an LSMR iteration on 50M floats was
    slower). On CUDA the group runs whole, or piece by piece where a vector
    comes in pieces.
    """

    inplace = True

    def __init__(self, chunk_bytes: int = 2 * 2 ** 20):
        super().__init__()
        self.chunk_bytes = chunk_bytes

    @staticmethod
    def xpay(x: Any, a: float, y: Any) -> Any:
        return torch.add(x, y, alpha=a, out=y)  # one pass, where mul_ then add_ make two

    @staticmethod
    def axpy(a: float, x: Any, y: Any) -> Any:
        return y.add_(x, alpha=a)

    @staticmethod
    def scale(a: float, y: Any) -> Any:
        return y.mul_(a)

    @staticmethod
    def own(y: Any) -> Any:
        return y.clone()

    def sweep(self, body: Callable[..., tuple[tuple[Any, ...], tuple[Any, ...]]],
              vectors: Sequence[Any], norm: Callable[[Any], Any]
              ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        first = vectors[0]  # the first vector is one tensor: it is overwritten
        n = first.shape[0]
        for v in vectors:
            if not isinstance(v, torch.Tensor):
                _check_pieces(v, n)
        on_cpu = first.device.type == "cpu"
        step = max(1, self.chunk_bytes // first.element_size()) if on_cpu else max(n, 1)
        if n == 0 or (n <= step and all(isinstance(v, torch.Tensor) for v in vectors)):
            whole = [v if isinstance(v, torch.Tensor) else first.new_zeros(0) for v in vectors]
            return super().sweep(body, whole, norm)
        # Cut at every multiple of step and at every piece's end, so that each
        # slice lies within one piece of every vector given in pieces (on CUDA,
        # where caches are no concern, only there).
        cuts = set(range(0, n, step))
        for v in vectors:
            if not isinstance(v, torch.Tensor):
                cuts.update(itertools.accumulate(p.shape[0] for p in v))
        bounds = sorted(cuts | {n})
        sizes = [hi - lo for lo, hi in itertools.pairwise(bounds)]
        norms = []
        for chunks in zip(*(_split(v, sizes) for v in vectors)):
            # Each slice's norm on the host (safe from under- and overflow, a few
            # microseconds against a slice's tens), combined without squares.
            out, chunk_norms = body(norm, *chunks)
            norms.append(chunk_norms)
        return tuple(vectors[:len(out)]), tuple(math.hypot(*p) for p in zip(*norms))


class _HostBatched(NewArrays):
    """Several right-hand sides with host scalars (`HostArrayScalars`): new
    tensors, each ``x + a * y`` one fused operation."""

    def __init__(self) -> None:
        super().__init__(_to_tensor)

    def xpay(self, x: Any, a: Any, y: Any) -> Any:
        a = self._like(a, y)
        return torch.addcmul(x, a, y) if isinstance(a, torch.Tensor) else torch.add(x, y, alpha=a)

    def axpy(self, a: Any, x: Any, y: Any) -> Any:
        return self.xpay(y, a, x)


def _check_pieces(pieces: Sequence[Any], n: int) -> None:
    if any(not isinstance(p, torch.Tensor) or p.ndim != 1 for p in pieces):
        raise TypeError("A: rmatvec_pieces must return a list of 1-D tensors")
    total = sum(p.shape[0] for p in pieces)
    if total != n:
        raise ValueError(f"A: rmatvec_pieces returned pieces of total length {total}, "
                         f"expected n = {n}")


def _split(v: Any, sizes: list[int]) -> list[Any]:
    """Views of consecutive slices of ``sizes`` of a tensor, or of a list of
    pieces none of whose ends falls inside a slice."""
    if isinstance(v, torch.Tensor):
        return list(torch.split(v, sizes))
    out: list[Any] = []
    it = iter(sizes)
    for p in v:
        within, left = [], p.shape[0]
        while left > 0:
            within.append(next(it))
            left -= within[-1]
        out.extend(torch.split(p, within) if within else ())
    return out


_IN_PLACE = _InPlace()
_HOST_BATCHED = _HostBatched()


class _Box:
    """Carries the solve's diagnostics (and the dual ``y`` for the gradient) out of
    `_Solve.forward`. Not a list: torch.func flattens a Function's arguments, and
    would find the output in it."""

    state: State
    y: Any
    #: Whether the forward carries what a backward will take from it (`y`): set
    #: for user solves that autograd records; the gradient's own solves do without.
    recording: bool = False


class _Solve(torch.autograd.Function):
    """x = solve(A, b, x0, damp); ``params`` are A itself (a tensor) or the
    tensors a LinearOperator depends on."""

    @staticmethod
    def forward(p: Prepared, box: _Box, b: Any, x0: Any, damp: Any, *params: Any) -> Any:
        with p.backend.solve_context():
            A = _operator_input(p, params)
            state, box.y = (p.run_differentiated(A, b, x0, damp) if box.recording
                            else (p.run(A, b, x0, damp), None))
        box.state = state
        return state["x"]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        p, box, b, x0, damp, *params = inputs
        ctx.p = p
        ctx.damp = damp
        ctx.y = box.y
        ctx.save_for_backward(b, x0, output, *params)
        ctx.save_for_forward(b, x0, output, *params)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], p: Prepared, box: _Box, b: Any, x0: Any,
             damp: Any, *params: Any) -> tuple[Any, int]:
        """torch.func.vmap over ``b`` and ``x0``: one solve with a column per batch
        entry (and right-hand side of a 2-D ``b``). The loop's stopping tests run
        on the host, once per column."""
        b_dim, x0_dim, damp_dim, *param_dims = in_dims[2:]
        if damp_dim is not None or any(d is not None for d in param_dims):
            raise NotImplementedError(
                "torch.func.vmap over lsqdiff solves batches b and x0 only (as the columns "
                "of a 2-D b); A, a LinearOperator's params and damp must not be batched")
        ndim = b.ndim - (b_dim is not None)  # b's own: 1, or 2 for several right-hand sides
        if ndim not in (1, 2):
            raise NotImplementedError("torch.func.vmap over lsqdiff solves needs a 1-D or 2-D b")

        def columns(t: Any, dim: Any) -> Any:  # (size, [k,] batch) as (size, k * batch)
            if dim is None:
                t = t.unsqueeze(-1).expand(*t.shape, info.batch_size)
            else:
                t = t.movedim(dim, -1)
            return t.reshape(t.shape[0], -1)

        X0 = None if x0 is None else columns(x0, x0_dim)
        X = _Solve.apply(p, box, columns(b, b_dim), X0, damp, *params)
        return (X, 1) if ndim == 1 else (X.reshape(X.shape[0], -1, info.batch_size), 2)

    @staticmethod
    def jvp(ctx: Any, _p: Any, _box: Any, db: Any, dx0: Any, ddamp: Any, *dparams: Any) -> Any:
        b, x0, x, *params = ctx.saved_tensors
        p, damp = ctx.p, ctx.damp
        A = _operator_input(p, params)
        if all(t is None for t in dparams):
            dA = None
        elif isinstance(A, torch.Tensor):
            dA = p.operator(dparams[0])  # the products are linear in A
        elif isinstance(A, Scaled):
            dA = p.operator(_scaled_tangent(A, dparams))
        else:
            dA = _function_tangent(p, A, params, dparams)
        # The tangent's solves are calls of this Function (see _routed): under
        # torch.func.vmap (jacfwd) their batched right-hand sides become columns.
        graph = _graph_wanted(b, x0, x, damp, *params)
        with _routed(params, damp):
            x_dot = p.tangent(A, b, x0, damp, x, None if graph else ctx.y, dA, db, dx0, ddamp)
        return x_dot.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, x_bar: Any) -> tuple[Any, ...]:
        b, x0, x, *params = ctx.saved_tensors
        p, damp = ctx.p, ctx.damp
        if not torch.is_grad_enabled():
            return _first_order(ctx, x_bar)
        A = _operator_input(p, params)
        if isinstance(A, torch.Tensor) and A.layout != torch.strided:
            with torch.no_grad():
                grads = _first_order(ctx, x_bar)
            return _once(grads, (x_bar, b, x0, damp, *params),
                         "second derivatives (create_graph=True, torch.func.grad) of an lsqdiff "
                         "solve with a sparse torch A are not supported; use a dense A, or "
                         "differentiate once")
        # A graph is being built (create_graph=True, torch.func): the backward's
        # solves are calls of this Function on operators made of the inputs
        # themselves (A or its params, damp), and the terms use the saved tensors
        # as they are, so the backward is differentiable like any other
        # computation (DESIGN.md section 7). Slower than the first-order path:
        # every solve is a Function call, and the forward's dual is recomputed.
        with _routed(params, damp):
            cot = p.backward(A, b, x0, damp, x, x_bar, None)
        return _input_grads(ctx, cot, A, b, x0, damp, params)


def _first_order(ctx: Any, x_bar: Any) -> tuple[Any, ...]:
    """The gradients, detached: no graph through the gradient's terms, and the
    solves' recurrences on host floats."""
    b, x0, x = (None if t is None else t.detach() for t in ctx.saved_tensors[:3])
    params = [t.detach() for t in ctx.saved_tensors[3:]]
    p, damp = ctx.p, ctx.damp
    if isinstance(damp, torch.Tensor):
        damp = damp.detach()
    A = _operator_input(p, params)
    with p.backend.solve_context():
        cot = p.backward(A, b, x0, damp, x, x_bar.detach(), ctx.y)
    return _input_grads(ctx, cot, A, b, x0, damp, ctx.saved_tensors[3:])


def _input_grads(ctx: Any, cot: Any, A: Any, b: Any, x0: Any, damp: Any,
                 params: Sequence[Any]) -> tuple[Any, ...]:
    """The Function's gradients, in the order of its inputs, from the `Cotangents`."""
    p, needs = ctx.p, ctx.needs_input_grad
    if isinstance(A, torch.Tensor):
        param_grads = [_operator_grad(p, cot, A) if needs[5] else None]
    else:
        param_grads = _function_grads(p, cot, A, params, needs[5:])
    return (None, None, _like(cot.b, b) if needs[2] else None,
            _like(cot.x0, x0) if needs[3] else None,
            _like(cot.damp, damp) if needs[4] else None, *param_grads)


#: The tensors the operators of the gradient's solves close over while those
#: solves must be differentiable (`TorchBackend.internal_solver`); None otherwise.
_ROUTE: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "lsqdiff_torch_route", default=None)


@contextlib.contextmanager
def _routed(params: Sequence[Any], damp: Any) -> Iterator[None]:
    """Run the gradient's solves as `_internal_solve` (calls of `_Solve`) inside."""
    token = _ROUTE.set((*params, *([damp] if isinstance(damp, torch.Tensor) else [])))
    try:
        yield
    finally:
        _ROUTE.reset(token)


def _internal_solve(params: tuple[Any, ...], op: Operator, rhs: Any, *, dtype: Any,
                    maxiter: int, atol: float, btol: float, ctol: float,
                    limit: int | None) -> tuple[Any, State]:
    """One of the gradient's solves as a call of the differentiable solve, on a
    LinearOperator whose params are the tensors its products close over: autograd
    differentiates it like a user's solve, and torch.func.vmap turns a batched
    right-hand side into columns (`_Solve.vmap`)."""
    from .. import _lsmr
    from .._solve import prepare

    A = _GradientOperator(op.shape, op.matvec, op.rmatvec, dtype=dtype, matmat=op.matvec,
                          rmatmat=op.rmatvec, params=list(params))
    p = prepare(_lsmr, A, rhs, damp=0.0, x0=None, atol=atol, btol=btol,
                conlim=1.0 / ctol if ctol > 0 else 0.0, maxiter=maxiter, default_maxiter=None,
                grad_maxiter=limit, nan_on_nonfinite=True)
    box = _Box()
    x = _Solve.apply(p, box, rhs, None, 0.0, *params)
    return x, box.state


class _GradientOperator(LinearOperator):
    """The operator of one of the gradient's solves (products closing over A's
    tensors and damp)."""


def _graph_wanted(*tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _once(grads: tuple[Any, ...], anchors: Sequence[Any], message: str) -> tuple[Any, ...]:
    """``grads``, made to raise ``message`` when differentiated again in any of
    ``anchors`` (the inputs they depend on): unlike ``once_differentiable``, also
    when the incoming gradient does not require grad, so no term is dropped."""
    live = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
    anchors = [a for a in anchors if isinstance(a, torch.Tensor) and a.requires_grad]
    if not live or not anchors:
        return grads
    out = _NotTwice.apply(message, len(live), *[grads[i] for i in live], *anchors)
    result = list(grads)
    for i, g in zip(live, out):
        result[i] = g
    return tuple(result)


class _NotTwice(torch.autograd.Function):
    """The identity on the first ``n`` tensors, whose derivative in any input
    raises ``message``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(message: str, n: int, *tensors: Any) -> tuple[Any, ...]:
        return tuple(t.clone() for t in tensors[:n])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.message = inputs[0]

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        raise NotImplementedError(ctx.message)


def _operator_input(p: Prepared, params: Sequence[Any]) -> Any:
    """A as the Function sees it: a tensor A is its own (unwrapped) parameter;
    a LinearOperator is used as given."""
    return params[0] if isinstance(p.args[0], torch.Tensor) else p.args[0]


def _scaled_tangent(A: Scaled, dparams: Sequence[Any]) -> Scaled:
    """The tangent of a preconditioned solve's operator ``[A N; damp N]``, which is
    linear in ``(A, damp)`` jointly: the same operator at their tangents."""
    dA = dparams[0] if isinstance(A.A, torch.Tensor) else None
    ddamp = dparams[-1] if isinstance(A.damp, torch.Tensor) else None
    return dataclasses.replace(
        A, A=torch.zeros_like(A.A) if dA is None else dA,
        damp=None if A.damp is None else 0.0 if ddamp is None else ddamp)


def _all_zero(tensors: Sequence[Any]) -> bool:
    try:
        return all(t is None or not bool(torch.any(t != 0)) for t in tensors)
    except RuntimeError:  # batched under torch.func.vmap: no value to look at
        return False


def _function_tangent(p: Prepared, A: LinearOperator, params: Sequence[Any],
                      dparams: Sequence[Any]) -> Operator | None:
    """Products with the tangent of a LinearOperator along its params' tangents.

    The JVP of ``matvec`` in the params needs ``matvec`` evaluated at other
    values of them: `torch.func.functional_call` provides that for an
    ``nn.Module``, the only kind of ``params`` a closure can be re-evaluated at."""
    if isinstance(A, _GradientOperator) and _all_zero(dparams):
        return None  # nested torch.func transforms pass zeros for tensors that do not move
    if isinstance(A, _GradientOperator):
        # Its products close over A's tensors; tangents of them would need the
        # products rebuilt from perturbed tensors, which a closure does not allow.
        raise NotImplementedError(
            "forward-over-reverse differentiation of an lsqdiff solve in A or damp "
            "(torch.func.hessian, jacfwd of grad or of jacrev, a jvp through a backward "
            "pass) is not supported; use reverse-over-reverse (torch.autograd.grad with "
            "create_graph=True), or forward-over-reverse in b and x0 only")
    module = A.params
    if not isinstance(module, torch.nn.Module):
        raise NotImplementedError(
            "A: forward-mode AD in a LinearOperator's params needs params=an nn.Module "
            "(whose parameters matvec uses), so that matvec can be evaluated at "
            "perturbed parameters; tensors a closure captures cannot be replaced")
    names = [name for name, _ in module.named_parameters()]
    calls = _Products(module, lambda: p.operator(A))
    tangents = tuple(torch.zeros_like(t) if d is None else d for t, d in zip(params, dparams))

    def along(name: str) -> MatVec:
        def product(v: Any) -> Any:
            def f(*ps: Any) -> Any:
                state = {"module." + k: t for k, t in zip(names, ps)}
                return torch.func.functional_call(calls, state, (name, v))
            return torch.func.jvp(f, tuple(params), tangents)[1]

        return product

    return Operator(A.shape, along("matvec"), along("rmatvec"))


class _Products(torch.nn.Module):
    """A LinearOperator's products as the forward of a module holding ``module``,
    so that `torch.func.functional_call` can swap its parameters (the operator is
    built inside, so that a derived ``rmatvec`` sees the swapped ones too)."""

    def __init__(self, module: Any, operator: Callable[[], Operator]):
        super().__init__()
        self.module = module
        self.operator = operator

    def forward(self, name: str, v: Any) -> Any:
        return getattr(self.operator(), name)(v)


def _parameters(A: Any) -> list[Any]:
    """The tensors whose gradients describe A's: A itself, or a LinearOperator's params."""
    if isinstance(A, torch.Tensor):
        return [A]
    params = getattr(A, "params", None)
    if params is None:
        return []
    if isinstance(params, torch.nn.Module):
        return list(params.parameters())
    if isinstance(params, torch.Tensor):
        return [params]
    if isinstance(params, Mapping):
        return list(params.values())
    if isinstance(params, Sequence):
        return list(params)
    raise TypeError("A.params must be a tensor, a sequence or dict of tensors, or an "
                    f"nn.Module, got {type(params).__name__}")


def _operator_grad(p: Prepared, cot: Any, A: Any) -> Any:
    """Gradient of a dense or sparse tensor A: sum_k s_k U_k V_k^H (on A's sparsity pattern)."""
    if A.layout == torch.strided:
        return _like(cot.A.dense(p.xp), A)
    coo = A.to_sparse_coo().coalesce()
    rows, cols = coo.indices()
    values = 0.0
    for s, U, V in cot.A.terms:
        U2, V2 = (U, V) if U.ndim == 2 else (U[:, None], V[:, None])
        values = values + s * (U2[rows] * V2[cols].conj()).sum(dim=1)
    # The indices come from a coalesced tensor: no invariant check needed.
    grad = torch.sparse_coo_tensor(coo.indices(), _like(values, coo.values()), A.shape,
                                   is_coalesced=True, check_invariants=False)
    return grad.to_sparse_csr() if A.layout == torch.sparse_csr else grad


def _function_grads(p: Prepared, cot: Any, A: LinearOperator, params: Sequence[Any],
                    needs: Sequence[bool]) -> list[Any]:
    """Gradients of a LinearOperator's params: autograd of sum_k s_k Re<U_k, A V_k>."""
    wanted = [t for t, need in zip(params, needs) if need]
    if not wanted:
        return [None] * len(params)
    graph = torch.is_grad_enabled()  # building a graph: the gradients must be differentiable
    if graph and torch._C._functorch.peek_interpreter_stack() is None:
        scales = tuple(float(s) for s, _, _ in cot.A.terms)
        arrays = [a for _, U, V in cot.A.terms for a in (U, V)]
        grads = iter(_ParamsGrad.apply(p, A, scales, _Box(), *arrays, *wanted))
        return [next(grads) if need else None for need in needs]
    terms = Terms(tuple((s, U.detach(), V.detach()) for s, U, V in cot.A.terms))
    with torch.enable_grad():
        total = terms.contract(p.operator(A).matvec, p.xp)
        _check_depends(total)
        grads = iter(torch.autograd.grad(total, wanted, allow_unused=True))
    out = [next(grads) if need else None for need in needs]
    if graph:
        # Under torch.func a Function called here would receive the params
        # unwrapped from the tensors matvec closes over: first derivatives only.
        anchors = (*params, *[a for _, U, V in cot.A.terms for a in (U, V)])
        return list(_once(tuple(out), anchors,
                          "second derivatives of an lsqdiff solve in the params of a "
                          "LinearOperator under torch.func transforms are not supported; use "
                          "torch.autograd.grad with create_graph=True"))
    return out


def _check_depends(total: Any) -> None:
    if not total.requires_grad:
        raise NotImplementedError(
            "A: the products of this LinearOperator do not depend on its params as "
            "autograd sees them. Either params does not list the tensors matvec uses, "
            "or this is a second derivative in A or damp under nested torch.func "
            "transforms (jacrev of grad or jacrev, hessian), which is not supported: "
            "use torch.autograd.grad with create_graph=True for second derivatives")


class _ParamsGrad(torch.autograd.Function):
    """``theta_bar = grad_theta sum_k s_k Re<U_k, A(theta) V_k>`` with the ``U_k``,
    ``V_k`` held constant, as a differentiable function of them and of theta.

    Autograd of the contraction itself would follow the ``U_k``, ``V_k`` back
    into the solves that made them (and so recurse into this backward); here
    they enter as detached leaves, and this Function's backward hands their
    gradients on. Second derivatives only: a third raises."""

    @staticmethod
    def forward(p: Prepared, A: LinearOperator, scales: tuple[float, ...], box: _Box,
                *tensors: Any) -> Any:
        k = 2 * len(scales)
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in tensors[:k]]
            terms = Terms(tuple(zip(scales, leaves[0::2], leaves[1::2])))
            total = terms.contract(p.operator(A).matvec, p.xp)
            _check_depends(total)
            params = tensors[k:]
            grads = torch.autograd.grad(total, params, allow_unused=True, create_graph=True)
        box.state = {"grads": grads, "wrt": leaves + list(params), "inputs": tensors}
        return tuple(torch.zeros_like(t) if g is None else g.detach()
                     for g, t in zip(grads, params))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.box = inputs[3]

    @staticmethod
    def backward(ctx: Any, *grads_bar: Any) -> tuple[Any, ...]:
        grads, wrt = ctx.box.state["grads"], ctx.box.state["wrt"]
        pairs = [(g, gb) for g, gb in zip(grads, grads_bar)
                 if g is not None and gb is not None and g.requires_grad]
        outs: tuple[Any, ...] = (None,) * len(wrt)
        if pairs:
            with torch.enable_grad():
                # retain_graph: this node may be differentiated again (gradgradcheck).
                outs = torch.autograd.grad([g for g, _ in pairs], wrt, [gb for _, gb in pairs],
                                           allow_unused=True, retain_graph=True)
        if torch.is_grad_enabled():
            outs = _once(tuple(outs), (*ctx.box.state["inputs"], *grads_bar),
                         "third derivatives of an lsqdiff solve in the params of a "
                         "LinearOperator are not supported")
        return (None,) * 4 + tuple(outs)


def _like(grad: Any, primal: Any) -> Any:
    """``grad`` in ``primal``'s dtype (the real part for a real input), or None."""
    if grad is None or not isinstance(primal, torch.Tensor):
        return None
    if grad.is_complex() and not primal.is_complex():
        grad = grad.real
    return grad.to(primal.dtype)
