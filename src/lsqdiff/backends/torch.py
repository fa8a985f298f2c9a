"""PyTorch adapter: the solve as a ``torch.autograd.Function`` whose backward is
`lsqdiff._gradient.pullback`; torch sparse tensors; ``rmatvec`` derived by
``torch.func.vjp``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .._vectors import NEW_ARRAYS, NewArrays
from ..operator import LinearOperator, MatVec, Operator
from ._base import Backend, State

if TYPE_CHECKING:
    from .._solve import Prepared


class TorchBackend(Backend):
    name = "torch"

    def solve_context(self) -> Any:
        return torch.no_grad()

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

    def vector_ops(self, batched: bool) -> Any:
        return NEW_ARRAYS if batched else _IN_PLACE

    def host_norm(self, v: Any) -> float:
        return float(torch.linalg.vector_norm(v))

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

    def derive_rmatvec(self, op: LinearOperator, dtype: Any, device: Any) -> MatVec:
        # The VJP of a linear map at any point is its adjoint; PyTorch's convention
        # for complex inputs already gives the conjugate transpose A^H u.
        _, pullback = torch.func.vjp(op.matvec, torch.zeros(op.shape[1], dtype=dtype, device=device))
        return lambda u: pullback(u)[0]

    def to_host(self, value: Any) -> Any:
        value = value.detach()
        if value.ndim == 0:
            return value.item()
        # tolist, not numpy(): under torch.func transforms tensors have no storage to view.
        return np.array(value.tolist(), dtype=str(value.dtype).removeprefix("torch."))


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
            out, chunk_norms = body(torch.linalg.vector_norm, *chunks)
            norms.append(chunk_norms)
        return tuple(vectors[:len(out)]), tuple(norm(torch.stack(p)) for p in zip(*norms))


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


class _Box:
    """Carries the solve's diagnostics (and the dual ``y`` for the gradient) out of
    `_Solve.forward`. Not a list: torch.func flattens a Function's arguments, and
    would find the output in it."""

    state: State
    y: Any
    recording: bool


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
        entry. The loop's stopping tests run on the host, once per column."""
        b_dim, x0_dim, damp_dim, *param_dims = in_dims[2:]
        if damp_dim is not None or any(d is not None for d in param_dims):
            raise NotImplementedError(
                "torch.func.vmap over lsqdiff solves batches b and x0 only (as the columns "
                "of a 2-D b); A, a LinearOperator's params and damp must not be batched")
        if b.ndim - (b_dim is not None) != 1:
            raise NotImplementedError("torch.func.vmap over lsqdiff solves needs a 1-D b")

        def columns(t: Any, dim: Any) -> Any:  # (size, batch)
            if dim is None:
                return t[:, None].expand(-1, info.batch_size)
            return t.movedim(dim, -1)

        X0 = None if x0 is None else columns(x0, x0_dim)
        return _Solve.apply(p, box, columns(b, b_dim), X0, damp, *params), 1

    @staticmethod
    def jvp(ctx: Any, _p: Any, _box: Any, db: Any, dx0: Any, ddamp: Any, *dparams: Any) -> Any:
        b, x0, x = (None if t is None else t.detach() for t in ctx.saved_tensors[:3])
        params = ctx.saved_tensors[3:]
        p, damp = ctx.p, ctx.damp
        A = _operator_input(p, params)
        if all(t is None for t in dparams):
            dA = None
        elif isinstance(A, torch.Tensor):
            dA = p.operator(dparams[0])  # the products are linear in A
        else:
            dA = _function_tangent(p, A, params, dparams)
        if isinstance(damp, torch.Tensor):
            damp = damp.detach()
        with torch.no_grad():
            x_dot = _unbatched("tangent", p.tangent, A, b, x0, damp, x, ctx.y, dA, db, dx0, ddamp)
        return x_dot.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, x_bar: Any) -> tuple[Any, ...]:
        # Detached: the gradient's terms must not lead autograd back into this node.
        b, x0, x = (None if t is None else t.detach() for t in ctx.saved_tensors[:3])
        params = ctx.saved_tensors[3:]
        p, damp = ctx.p, ctx.damp
        A = _operator_input(p, [t.detach() for t in params])
        cot = _unbatched("gradient", p.backward, A, b, x0, damp, x, x_bar, ctx.y)
        needs = ctx.needs_input_grad
        if isinstance(A, torch.Tensor):
            param_grads = [_operator_grad(p, cot, A) if needs[5] else None]
        else:
            param_grads = _function_grads(p, cot, A, params, needs[5:])
        return (None, None, _like(cot.b, b) if needs[2] else None,
                _like(cot.x0, x0) if needs[3] else None,
                _like(cot.damp, damp) if needs[4] else None, *param_grads)


def _unbatched(what: str, rule: Callable[..., Any], *args: Any) -> Any:
    """``rule(*args)``, with a clear error where torch.func.vmap batches its inputs."""
    try:
        return rule(*args)
    except RuntimeError as err:
        if not str(err).startswith("vmap:"):
            raise
        raise NotImplementedError(
            f"torch.func.vmap over the {what} of an lsqdiff solve (vmap of grad or jvp, "
            "jacrev, jacfwd) is not supported: the solves' stopping tests run on the host. "
            "Use torch.autograd, one jvp at a time, or a 2-D b for several right-hand "
            "sides (vmap of the solve itself and grad of a vmapped solve work)") from err


def _operator_input(p: Prepared, params: Sequence[Any]) -> Any:
    """A as the Function sees it: a tensor A is its own (unwrapped) parameter;
    a LinearOperator is used as given."""
    return params[0] if isinstance(p.args[0], torch.Tensor) else p.args[0]


def _function_tangent(p: Prepared, A: LinearOperator, params: Sequence[Any],
                      dparams: Sequence[Any]) -> Operator:
    """Products with the tangent of a LinearOperator along its params' tangents.

    The JVP of ``matvec`` in the params needs ``matvec`` evaluated at other
    values of them: `torch.func.functional_call` provides that for an
    ``nn.Module``, the only kind of ``params`` a closure can be re-evaluated at."""
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
    with torch.enable_grad():
        total = cot.A.contract(p.operator(A).matvec, p.xp)
        grads = iter(torch.autograd.grad(total, wanted, allow_unused=True))
    return [next(grads) if need else None for need in needs]


def _like(grad: Any, primal: Any) -> Any:
    """``grad`` in ``primal``'s dtype (the real part for a real input), or None."""
    if grad is None or not isinstance(primal, torch.Tensor):
        return None
    if grad.is_complex() and not primal.is_complex():
        grad = grad.real
    return grad.to(primal.dtype)
