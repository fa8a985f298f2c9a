"""PyTorch part of `lsqdiff.nullspace.project`: flatten tensors, linearise with
``torch.func``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import array_api_compat
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._core import Linearization
from ._linear import LinearConstraint


def linearize(constraint: Callable[[Any], Any], params: Any, direction: Any) -> Linearization:
    """``J`` of ``constraint`` at ``params`` as JVP/VJP closures, ``direction`` flattened.

    Under ``torch.inference_mode()`` too: ``J``'s products need autograd, which
    inference mode turns off and ``torch.enable_grad`` does not turn back on, so
    the graph is built, and the products run, outside it. A `LinearConstraint`
    brings its own products: no graph (`linear`)."""
    with torch.inference_mode(False):
        if isinstance(constraint, LinearConstraint):
            return linear(constraint, params, direction)
        return _linearize(constraint, params, direction)


def linear(constraint: LinearConstraint, params: Any, direction: Any | None) -> Linearization:
    """`linearize` for a `LinearConstraint`: ``J v`` and ``J^T u`` are its own
    ``matvec`` and ``rmatvec``, their outputs checked at every call.

    ``direction`` may be None (``h`` is then None: the caller gives ``J h`` to
    `lsqdiff.nullspace._core.correction` itself); ``unflatten`` then maps to
    the parameters' structure."""
    p_leaves, rebuild = _leaves(params, "params")
    a_dtype = dtype = _widest(p_leaves)  # A's products' dtype, and c's
    c = linear_residual(constraint, params)
    k = c.shape[0]
    h = None
    rebuild_h, h_leaves = rebuild, p_leaves
    if direction is not None:
        h_leaves, rebuild_h = _leaves(direction, "direction")
        _check_match(params, direction, p_leaves, h_leaves)
        dtype = torch.promote_types(dtype, _widest(h_leaves))
        with torch.no_grad():
            h = _flat(h_leaves, dtype)
    sizes = [t.numel() for t in p_leaves]
    adjoint = _Adjoint(constraint.rmatvec, params, p_leaves)

    def matvec(v: Any) -> Any:
        return _check_matvec(constraint.matvec(rebuild(_views(v, p_leaves, sizes))), k,
                             a_dtype).to(dtype)

    def rmatvec_pieces(u: Any) -> list[Any]:
        return [g.reshape(-1).to(dtype) for g in adjoint(u.to(a_dtype))]

    return _assembled(c, dtype, sizes, h, matvec, rmatvec_pieces, rebuild_h, h_leaves)


def _views(flat: Any, like: Sequence[Any], sizes: Sequence[int]) -> list[Any]:
    """Views of one flat buffer shaped as the leaves ``like``, cast to each leaf's
    own dtype (a no-op when it matches) so that the constraint sees the dtypes
    it was written for."""
    return [part.view(t.shape).to(t.dtype) for part, t in zip(torch.split(flat, sizes), like)]


def _assembled(c: Any, dtype: Any, sizes: Sequence[int], h: Any, matvec: Callable[[Any], Any],
               rmatvec_pieces: Callable[[Any], list[Any]], rebuild_h: Callable[[Any], Any],
               h_leaves: Sequence[Any]) -> Linearization:
    """The `Linearization` of products on flat vectors. ``J^T u`` also comes leaf
    by leaf: LSMR's in-place update reads the pieces where they were made, where
    a gathered copy would cost a pass over N floats and a buffer of N."""
    def rmatvec(u: Any) -> Any:
        return torch.cat(rmatvec_pieces(u))

    def unflatten(d: Any) -> Any:
        return rebuild_h(_views(d, h_leaves, sizes))

    return Linearization(xp=array_api_compat.array_namespace(c), dtype=dtype, n=sum(sizes), h=h,
                         c=c.to(dtype), matvec=_product(matvec), rmatvec=_product(rmatvec),
                         rmatvec_pieces=_product(rmatvec_pieces), unflatten=_no_grad(unflatten),
                         host=_host)


def linear_residual(constraint: LinearConstraint, params: Any) -> Any:
    """``c(params) = A params - b`` of a `LinearConstraint`, without autograd
    history; ``A params`` is checked as every ``matvec`` output is."""
    p_leaves, _ = _leaves(params, "params")
    with torch.inference_mode(False), torch.no_grad():
        a_theta = _check_matvec(constraint.matvec(params), None, _widest(p_leaves))
        if constraint.offset is None:
            return a_theta
        b = constraint.offset
        if not isinstance(b, torch.Tensor) or b.shape != a_theta.shape:
            raise ValueError(f"offset must be a 1-D torch tensor of shape {tuple(a_theta.shape)} "
                             f"(matvec's output), got {type(b).__name__} of shape "
                             f"{tuple(getattr(b, 'shape', ()))}")
        return a_theta - b.to(a_theta.dtype)


def _check_matvec(out: Any, k: int | None, dtype: Any) -> Any:
    """``out`` if it is a 1-D tensor (of length ``k``, where given) of ``dtype``."""
    shape = tuple(getattr(out, "shape", ()))
    if not isinstance(out, torch.Tensor) or len(shape) != 1 or k is not None and shape != (k,):
        raise ValueError(f"matvec must return a 1-D torch tensor of shape "
                         f"{'(k,)' if k is None else (k,)} (the constraint's length), got "
                         f"{type(out).__name__} of shape {shape}")
    if out.dtype != dtype:
        raise TypeError(f"matvec must return the parameters' dtype {dtype}, got {out.dtype}")
    return out


class _Adjoint:
    """``u -> A^T u`` by the user's ``rmatvec``, leaf by leaf in the parameters'
    order; leaves it leaves out (None, or a key a dict omits) are zeros."""

    def __init__(self, rmatvec: Callable[[Any], Any], params: Any, leaves: list[Any]):
        self.rmatvec, self.leaves = rmatvec, leaves
        self.keys = list(params.keys()) if isinstance(params, Mapping) else None
        self.single = isinstance(params, torch.Tensor)

    def __call__(self, u: Any) -> list[Any]:
        out = self.rmatvec(u)
        if self.single:
            got: list[Any] | None = [out] if isinstance(out, torch.Tensor) else None
        elif self.keys is not None:
            got = None
            if isinstance(out, Mapping):
                extra = [key for key in out if key not in self.keys]
                if extra:
                    raise ValueError(f"rmatvec returned keys {extra} that are not parameters")
                got = [out.get(key) for key in self.keys]
        else:
            got = list(out) if isinstance(out, (list, tuple)) else None
            if got is not None and len(got) != len(self.leaves):
                raise ValueError(f"rmatvec returned {len(got)} tensors for {len(self.leaves)} "
                                 "parameters")
        if got is None:
            kind = "a tensor" if self.single else "a dict" if self.keys else "a list/tuple"
            raise TypeError(f"rmatvec must return the parameters' structure ({kind} of "
                            f"tensors), got {type(out).__name__}")
        pieces = []
        for i, (g, p) in enumerate(zip(got, self.leaves)):
            where = self.keys[i] if self.keys is not None else i
            if g is None:
                pieces.append(torch.zeros_like(p))
                continue
            if not isinstance(g, torch.Tensor) or g.shape != p.shape:
                raise ValueError(f"rmatvec's entry {where!r} must be a tensor of its parameter's "
                                 f"shape {tuple(p.shape)}, got {type(g).__name__} of shape "
                                 f"{tuple(getattr(g, 'shape', ()))}")
            if g.dtype != p.dtype:
                raise TypeError(f"rmatvec's entry {where!r} must have its parameter's dtype "
                                f"{p.dtype}, got {g.dtype}")
            pieces.append(g)
        return pieces


def _linearize(constraint: Callable[[Any], Any], params: Any, direction: Any) -> Linearization:
    p_leaves, rebuild = _leaves(params, "params")
    h_leaves, rebuild_h = _leaves(direction, "direction")
    _check_match(params, direction, p_leaves, h_leaves)
    dtype = torch.promote_types(_widest(p_leaves), _widest(h_leaves))
    sizes = [t.numel() for t in p_leaves]

    def c_of(*leaves: Any) -> Any:
        c = constraint(rebuild(list(leaves)))
        _check_output(c)
        return c

    # The constraint is linearised at the parameters themselves (detached views
    # that are leaves of a graph of their own: none reaches the caller's tensors),
    # never at a flat copy. Its graph is built once, whatever the caller's grad
    # mode, and every product with J^T reuses it.
    # An inference tensor cannot join a graph: a copy of it can.
    leaves = tuple((t.clone() if t.is_inference() else t.detach()).requires_grad_()
                   for t in p_leaves)
    with torch.enable_grad():
        c_graph = c_of(*leaves)
    c = c_graph.detach()
    dtype = torch.promote_types(dtype, c.dtype)
    with torch.no_grad():
        h = _flat(h_leaves, dtype)  # the direction is only read, never written
    pullback = _Pullback(c_graph, leaves)
    tangent = _Tangent(c_graph, leaves, c_of)

    def matvec(v: Any) -> Any:
        return tangent(_views(v, p_leaves, sizes)).to(dtype)

    def rmatvec_pieces(u: Any) -> list[Any]:
        return [g.reshape(-1).to(dtype) for g in pullback(u.to(c.dtype))]

    return _assembled(c, dtype, sizes, h, matvec, rmatvec_pieces, rebuild_h, h_leaves)


class _Pullback:
    """``u -> J^T u`` on the constraint's graph, leaf by leaf (zeros for leaves
    the constraint does not reach)."""

    def __init__(self, c: Any, leaves: tuple[Any, ...]):
        self.c, self.leaves = c, leaves

    def __call__(self, u: Any) -> tuple[Any, ...]:
        if not self.c.requires_grad:
            return tuple(torch.zeros_like(t) for t in self.leaves)
        return torch.autograd.grad(self.c, self.leaves, grad_outputs=u, retain_graph=True,
                                   allow_unused=True, materialize_grads=True)


class _Tangent:
    """``v -> J v``, by differentiating ``u -> J^T u`` (linear in ``u``) once more.

    That reuses the constraint's graph: on an MLP it costs about half of
    ``torch.func.jvp``, which evaluates the constraint again with every
    product. Where an operation of the constraint has no second derivative
    (fused attention kernels, ``once_differentiable`` functions) the first
    product falls back to ``torch.func.jvp`` for good.
    """

    def __init__(self, c: Any, leaves: tuple[Any, ...], c_of: Callable[..., Any]):
        self.c, self.leaves, self.c_of = c, leaves, c_of
        self.graph: tuple[Any, list[tuple[Any, int]]] | None = None
        self.forward_mode = False

    def __call__(self, v: Sequence[Any]) -> Any:
        if not self.forward_mode:
            try:
                return self._reverse_over_reverse(v)
            except (RuntimeError, NotImplementedError):
                self.forward_mode = True
        primals = tuple(t.detach() for t in self.leaves)
        # The fused attention kernels (flash, memory-efficient) have no forward-mode
        # derivative; the math kernel computes the same attention and has one.
        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(self.c_of, primals, tuple(v))[1]

    def _reverse_over_reverse(self, v: Sequence[Any]) -> Any:
        if not self.c.requires_grad:
            return torch.zeros_like(self.c)
        if self.graph is None:
            u0 = torch.zeros_like(self.c, requires_grad=True)
            with torch.enable_grad():
                g = torch.autograd.grad(self.c, self.leaves, grad_outputs=u0, retain_graph=True,
                                        create_graph=True, allow_unused=True)
            outputs = [(gi, i) for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
            if not _differentiable_in(u0, [gi for gi, _ in outputs]):
                raise NotImplementedError("the constraint's VJP cannot be differentiated")
            self.graph = u0, outputs
        u0, outputs = self.graph
        if not outputs:
            return torch.zeros_like(self.c)
        return torch.autograd.grad([gi for gi, _ in outputs], u0,
                                   grad_outputs=[v[i] for _, i in outputs], retain_graph=True,
                                   allow_unused=True, materialize_grads=True)[0]


def _differentiable_in(u0: Any, outputs: Sequence[Any]) -> bool:
    """Whether every output's graph reaches ``u0`` and holds no node that refuses
    differentiation. A ``once_differentiable`` backward, or one with no
    derivative of its own, leaves an error node that autograd prunes silently
    when another path reaches ``u0``: its part of ``J v`` would be dropped."""
    reaches: dict[Any, bool] = {}  # node -> whether u0 lies below it
    # Depth first, a node decided after its inputs (the graph is acyclic).
    stack: list[tuple[Any, bool]] = [(out.grad_fn, False) for out in outputs]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            reaches[node] = getattr(node, "variable", None) is u0 or any(
                reaches[fn] for fn, _ in node.next_functions if fn is not None)
        elif node is not None and node not in reaches:
            if "Error" in node.name() or "NotImplemented" in node.name():
                return False
            reaches[node] = False
            stack.append((node, True))
            stack.extend((fn, False) for fn, _ in node.next_functions if fn is not None)
    return all(out.grad_fn is not None and reaches[out.grad_fn] for out in outputs)


def buffers(like: Sequence[Any]) -> list[Any]:
    """Uninitialised tensors shaped as ``like``: views of one flat buffer where
    they share a dtype and device (`linearize` then takes them as they are,
    without copying them into a flat vector), else one tensor each."""
    if len({(t.dtype, t.device) for t in like}) != 1:
        return [torch.empty_like(t) for t in like]
    flat = torch.empty(sum(t.numel() for t in like), dtype=like[0].dtype, device=like[0].device)
    parts = torch.split(flat, [t.numel() for t in like])
    return [part.view(t.shape) for part, t in zip(parts, like)]


def _flat(leaves: Sequence[Any], dtype: Any) -> Any:
    """The leaves as one flat vector of ``dtype``: a view where they already lie
    one after the other in one buffer of that dtype, else a copy."""
    first = leaves[0]
    offset = first.storage_offset()
    contiguous = all(t.dtype == dtype and t.is_contiguous() for t in leaves)
    if contiguous and all(t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                          for t in leaves):
        for t in leaves:
            if t.storage_offset() != offset:
                break
            offset += t.numel()
        else:
            total = offset - first.storage_offset()
            return first.detach().as_strided((total,), (1,), first.storage_offset())
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in leaves])


def _leaves(tree: Any, name: str) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """The tensors of a tensor, sequence or dict, and how to rebuild that container."""
    if isinstance(tree, torch.Tensor):
        return [tree], lambda leaves: leaves[0]
    if isinstance(tree, Mapping):
        keys = list(tree.keys())
        leaves = list(tree.values())
        rebuild: Callable[[list[Any]], Any] = lambda ls: dict(zip(keys, ls))  # noqa: E731
    elif isinstance(tree, (list, tuple)):
        leaves = list(tree)
        rebuild = (lambda ls: list(ls)) if isinstance(tree, list) else (lambda ls: tuple(ls))
    else:
        raise TypeError(f"{name} must be a tensor, a list/tuple of tensors or a dict of "
                        f"tensors, got {type(tree).__name__}")
    if not leaves:
        raise ValueError(f"{name} is empty")
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{name}: every entry must be a torch tensor, entry "
                            f"{keys[i] if isinstance(tree, Mapping) else i!r} is "
                            f"{type(leaf).__name__}")
        if not leaf.is_floating_point():
            raise TypeError(f"{name}: entries must be real floating tensors, got {leaf.dtype}")
    return leaves, rebuild


def _check_match(params: Any, direction: Any, p_leaves: list[Any], h_leaves: list[Any]) -> None:
    if isinstance(params, Mapping) != isinstance(direction, Mapping) or \
            isinstance(params, torch.Tensor) != isinstance(direction, torch.Tensor):
        raise TypeError(f"direction must have params' structure: got {type(direction).__name__} "
                        f"for params of type {type(params).__name__}")
    if isinstance(params, Mapping) and list(params.keys()) != list(direction.keys()):
        raise ValueError(f"direction's keys {list(direction.keys())} differ from params' "
                         f"{list(params.keys())}")
    if len(p_leaves) != len(h_leaves):
        raise ValueError(f"direction has {len(h_leaves)} tensors but params has {len(p_leaves)}")
    for i, (p, h) in enumerate(zip(p_leaves, h_leaves)):
        if p.shape != h.shape:
            raise ValueError(f"direction entry {i} has shape {tuple(h.shape)} but the "
                             f"parameter has {tuple(p.shape)}")
        if p.device != h.device:
            raise ValueError(f"direction entry {i} is on {h.device} but the parameter is on "
                             f"{p.device}")


def _check_output(c: Any) -> None:
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"constraint must return a 1-D torch tensor, got {type(c).__name__}")
    if c.ndim != 1:
        raise ValueError(f"constraint must return a 1-D tensor, got shape {tuple(c.shape)}")
    if not c.is_floating_point():
        raise TypeError(f"constraint must return a real floating tensor, got {c.dtype}")


def _widest(leaves: list[Any]) -> Any:
    dtype = leaves[0].dtype
    for t in leaves[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any) -> Any:
        with torch.no_grad():
            return fn(*args)
    return wrapped


def _product(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A product with ``J`` or ``J^T``: through the constraint's graph, so outside
    inference mode whatever the caller's mode (it records nothing)."""
    def wrapped(*args: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args)
    return wrapped


def _host(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value
