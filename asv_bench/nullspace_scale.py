#!/usr/bin/env python
"""The null-space method at scale: one constrained training step on a
50M-parameter float32 model against an unconstrained one and a Cooper one
(PyTorch, CPU or CUDA).

    python asv_bench/nullspace_scale.py              # full figures (a few minutes on CPU)
    python asv_bench/nullspace_scale.py --quick      # width 1024: a smoke run
    python asv_bench/nullspace_scale.py --parts      # only the pieces of an LSMR iteration
    python asv_bench/nullspace_scale.py --live       # the buffers alive at a step's peak
    python asv_bench/nullspace_scale.py --device cuda
    python asv_bench/nullspace_scale.py --model vit  # the ViT with the pruning constraint

``--model vit``: the 49.6M-parameter vision transformer of
``lsqdiff.examples.sparsity`` (ViT-B width, 7 blocks, patch 2 on 8x8 images;
``--quick``: width 256, 4 blocks) on a batch of 32 random images with random
labels (cross-entropy); constraint: the gradual-pruning one at its end, the
90% smallest-magnitude weights of every Linear/Conv layer held at zero
(``c = W[held]``, k = 44.6M rows, ``J J^T = I``), given as a
`lsqdiff.nullspace.LinearConstraint` (``J v`` a gather, ``J^T u`` a scatter;
no autograd graph; the update placement keeps no ``theta_old``). The "VJP of
the constraint" is then autograd's, through ``cat(w[mask])``. Everything below
holds for either model.

Model: MLP 1024 -> 4096 -> 4096 -> 4096 -> 4096 -> 32 (ReLU), 54.7M parameters.
Unconstrained step: forward + backward of an MSE loss on a batch of 64 and one
``torch.optim.Adam`` step. Constraint: the network's 32 outputs at 32 fixed
collocation points equal fixed targets, k = 1,024 outputs, whose Jacobian is
as dense as the network's. Constrained step: the same step through
``lsqdiff.nullspace.torch.ConstrainedOptimizer`` (placement "update"), LSMR
with atol = btol = 0 so that it runs exactly ``maxiter`` iterations (20, 50).

Figures, each the median over ``--reps`` rounds of the figure computed within
the round, in which every configuration runs back to back (ratios of times
taken side by side, not lone absolute times, are the point on a shared
machine, whose memory bandwidth drifts by 10-20% over minutes):

* per LSMR iteration: the median, over the iterations of the maxiter-50
  step, of the time from one product with J to the next (the benchmark
  wraps the projection's linearisation to read the clock; the median keeps
  out the machine's occasional stalls), and, as a check, the mean
  (step(50) - step(20)) / 30; each divided by one VJP of the constraint (the
  backward pass alone, on a graph already built, the gradients it returns
  freed inside the timing as LSMR frees its products; the median of three
  calls in the round) and by its forward + VJP;
* constrained step / unconstrained step at maxiter 20 and 50;
* peak memory: the process's peak RSS (``VmHWM``, Linux) over a constrained
  step ÷ that over an unconstrained step, each configuration in a fresh
  process that builds the model, takes one (Adam-state-allocating) step of its
  own kind, resets ``VmHWM`` through ``/proc/self/clear_refs`` and takes the
  measured step; glibc's mmap threshold is fixed at 64 KiB so that freed
  tensors go back to the OS. On CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

MB = 2 ** 20


def build(width: int, device: str, seed: int = 0, model: str = "mlp") -> dict:
    """Model, Adam, batch, loss, the constraint and Cooper's violation."""
    if model == "vit":
        return build_vit(width, device, seed)
    import torch

    torch.manual_seed(seed)
    d_in, d_out, depth = 1024, 32, 3
    sizes = [d_in] + [width] * (depth + 1) + [d_out]
    layers: list = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).to(device)
    x = torch.randn(64, d_in, device=device)
    y = torch.randn(64, d_out, device=device)
    x_col = torch.randn(32, d_in, device=device)
    y_col = torch.randn(32, d_out, device=device)

    def constraint(params: dict):
        return (torch.func.functional_call(model, params, (x_col,)) - y_col).reshape(-1)

    params = dict(model.named_parameters())
    return {"model": model, "x": x, "y": y, "constraint": constraint,
            "loss": lambda: torch.nn.functional.mse_loss(model(x), y),
            "violation": lambda: constraint(params), "violation_size": 32 * d_out,
            "adam": torch.optim.Adam(model.parameters(), lr=1e-4),
            "parameters": sum(p.numel() for p in model.parameters()), "k": 32 * d_out}


def build_vit(width: int, device: str, seed: int = 0) -> dict:
    """The ViT with 90% of its Linear/Conv weights held at zero (`build`'s keys;
    ``width`` 768 is the 49.6M model, anything else a 4-block smoke version)."""
    import torch

    from lsqdiff.examples._pruning import GradualMask
    from lsqdiff.examples._vit import VIT_50M, vit

    torch.manual_seed(seed)
    shape = VIT_50M if width == 768 else dict(dim=width, depth=4, heads=8, mlp=4 * width)
    model = vit(**shape).to(device)
    x = torch.rand(32, 1, 8, 8, device=device)
    y = torch.randint(10, (32,), device=device)
    params = dict(model.named_parameters())
    mask = GradualMask(model)
    mask.grow(params, 0.9)
    mask.zero_(params)
    return {"model": model, "x": x, "y": y, "constraint": mask.constraint,
            "loss": lambda: torch.nn.functional.cross_entropy(model(x), y),
            "violation": lambda: mask.violation(params), "violation_size": mask.total,
            "adam": torch.optim.Adam(model.parameters(), lr=1e-4),
            "parameters": sum(p.numel() for p in model.parameters()), "k": mask.count()}


def make_step(setup: dict, maxiter: int | None, cooper: bool = False):
    """One training step: unconstrained (``maxiter=None``), constrained, or
    Cooper's (``cooper=True``: augmented Lagrangian on the same ``c``, with one
    multiplier per entry of ``setup["violation"]()``, alternating updates)."""
    from lsqdiff.nullspace.torch import ConstrainedOptimizer

    model, loss = setup["model"], setup["loss"]
    opt = setup["adam"]
    if cooper:
        from lsqdiff.examples._pruning import cooper_optimizer

        roll = cooper_optimizer(opt, setup["violation"], setup["violation_size"], rho=0.1)
        return lambda: roll(loss)
    if maxiter is not None:
        opt = ConstrainedOptimizer(setup["adam"], setup["constraint"], model, gamma=0.1,
                                   maxiter=maxiter, atol=0.0, btol=0.0)

    def step():
        opt.zero_grad()
        loss().backward()
        opt.step()
        return opt

    return step


def make_vjp(setup: dict):
    """The constraint's VJP: (backward alone on a built graph, forward + backward)."""
    import torch

    params = {n: p.detach() for n, p in setup["model"].named_parameters()}
    c, pullback = torch.func.vjp(setup["constraint"], params)
    u = torch.randn_like(c)

    def backward():
        pullback(u)  # and frees the gradients it made

    def forward_backward():
        torch.func.vjp(setup["constraint"], params)[1](u)

    return backward, forward_backward


def make_parts(setup: dict) -> dict:
    """What one LSMR iteration is made of: the projection's two products with J
    (``rmatvec``: a VJP, read leaf by leaf; ``matvec``: reverse over reverse on
    the same graph; for a `LinearConstraint` both are its own products),
    ``torch.func.jvp`` for comparison, and one vector update
    on N floats, allocating and in place; and 12 iterations of LSMR itself,
    each timed from one product with J to the next: the median iteration less
    the two products is the iteration's own vector work. Returns the
    configurations and the list those iteration times go to."""
    import torch

    from lsqdiff.nullspace._core import correction
    from lsqdiff.nullspace._torch import linearize

    params = {n: p.detach() for n, p in setup["model"].named_parameters()}
    tangent = {n: torch.randn_like(p) for n, p in params.items()}
    lin = linearize(setup["constraint"], params, tangent)
    u = torch.randn(setup["k"], device=setup["x"].device)
    x = torch.randn(setup["parameters"], device=setup["x"].device)
    v = torch.randn_like(x)

    def jvp():
        return torch.func.jvp(setup["constraint"], (params,), (tangent,))

    def axpy():
        return x + 0.5 * v

    def axpy_():
        return torch.add(v, x, alpha=0.5, out=x)

    stamps: list = []
    timed = stamped(lin, setup["x"].device.type, stamps)
    lsmr_iterations: list = []

    def lsmr():
        stamps.clear()
        correction(timed, gamma=0.1, sign=1.0, normalize_gamma=False, damp=0.0, maxiter=12,
                   atol=0.0, btol=0.0)
        lsmr_iterations.extend(iteration_times(stamps))

    return {"rmatvec (J^T u, leaf by leaf)": lambda: lin.rmatvec_pieces(u),
            "matvec (J v)": lambda: lin.matvec(lin.h),
            "torch.func.jvp": jvp, "x + a v (N floats, new tensor)": axpy,
            "x = v + a x (in place)": axpy_, "LSMR, 12 iterations": lsmr}, lsmr_iterations


def stamped(lin, device: str, stamps: list):
    """``lin`` (a `Linearization`) whose every product ``J v`` first appends the
    time to ``stamps``: LSMR makes one per iteration, after one for its
    right-hand side."""
    def matvec(v):
        _sync(device)
        stamps.append(time.perf_counter())
        return lin.matvec(v)

    return dataclasses.replace(lin, matvec=matvec)


def iteration_times(stamps: list) -> list:
    """Seconds of each full LSMR iteration of one projection (the first interval,
    from the right-hand side's product to the first iteration's, is LSMR's start)."""
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def parts(width: int, device: str, reps: int, model: str = "mlp") -> dict:
    """Median seconds of the VJP, the JVP and a vector update, interleaved."""
    setup = build(width, device, model=model)
    configs = dict(zip(("vjp", "forward+vjp"), make_vjp(setup)))
    more, lsmr_iterations = make_parts(setup)
    configs.update(more)
    for fn in configs.values():
        fn()
    times: dict = {name: [] for name in configs}
    for _ in range(reps):
        for name, fn in configs.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    del med["LSMR, 12 iterations"]
    med["one LSMR iteration (median)"] = iteration = statistics.median(lsmr_iterations)
    med["its vector work (iteration - rmatvec - matvec)"] = (
        iteration - med["rmatvec (J^T u, leaf by leaf)"] - med["matvec (J v)"])
    return med


def live_buffers(width: int, device: str, model: str = "mlp", min_bytes: int = 2 ** 20) -> dict:
    """The tensors of at least ``min_bytes`` made during one constrained step
    (maxiter 20, after a first step) that are alive at the step's peak: a
    ``TorchDispatchMode`` counts every new tensor an aten call returns (views
    and in-place results are not new) until Python drops it. Returns the peak
    in bytes and, per (aten call, the line of lsqdiff or this script that made
    it), the bytes alive at the peak."""
    import collections
    import traceback
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Live(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict = {}
            self.now = self.peak = 0
            self.at_peak: list = []

        def free(self, key: int) -> None:
            self.now -= self.live.pop(key)[0]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = tree_flatten((args, kwargs))[0]
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or func.is_view or func._schema.is_mutable \
                        or any(t is a for a in inputs) or id(t) in self.live:
                    continue
                size = t.untyped_storage().nbytes()
                if size < min_bytes:
                    continue
                where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                         for f in traceback.extract_stack()[:-1]
                         if "lsqdiff" in f.filename or "nullspace_scale" in f.filename]
                self.live[id(t)] = (size, str(func), where[-1] if where else "?")
                self.now += size
                weakref.finalize(t, self.free, id(t))
                if self.now > self.peak:
                    self.peak, self.at_peak = self.now, list(self.live.values())
            return out

    setup = build(width, device, model=model)
    step = make_step(setup, 20)
    step()
    mode = Live()
    with mode:
        step()
    alive: dict = collections.Counter()
    for size, func, where in mode.at_peak:
        alive[(func, where)] += size
    return {"peak": mode.peak, "alive": dict(alive), "parameters": setup["parameters"],
            "k": setup["k"]}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class IterationClock:
    """Times the LSMR iterations inside `ConstrainedOptimizer` steps: wraps the
    projection's linearisation with `stamped` until `close`."""

    def __init__(self, device: str):
        import lsqdiff.nullspace.torch as constrained

        self.module, self.stamps = constrained, []
        self.linearize = linearize = constrained.linearize
        constrained.linearize = lambda *a, **k: stamped(linearize(*a, **k), device, self.stamps)

    def close(self) -> None:
        self.module.linearize = self.linearize


def timings(width: int, device: str, reps: int, model: str = "mlp") -> dict:
    """Median seconds of each configuration over ``reps`` interleaved rounds."""
    setup = build(width, device, model=model)
    clock = IterationClock(device)
    backward, forward_backward = make_vjp(setup)
    configs = {"vjp": backward, "forward+vjp": forward_backward,
               "unconstrained": make_step(setup, None), "cooper": make_step(setup, None, True),
               "constrained20": make_step(setup, 20), "constrained50": make_step(setup, 50)}
    for fn in configs.values():  # warm-up (allocates Adam's state)
        fn()
    times: dict = {name: [] for name in (*configs, "iteration", "iteration (mean)")}
    ratios: dict = {name: [] for name in RATIOS}
    itn: dict = {}
    for _ in range(reps):
        round_s = {}
        for name, fn in configs.items():
            calls = []
            for _ in range(3 if name in ("vjp", "forward+vjp") else 1):
                clock.stamps = []
                _sync(device)
                t0 = time.perf_counter()
                out = fn()
                _sync(device)
                calls.append(time.perf_counter() - t0)
            round_s[name] = statistics.median(calls)
            times[name].append(round_s[name])
            if name.startswith("constrained"):
                itn[name] = out.last_info.itn
        iterations = iteration_times(clock.stamps)  # of the maxiter-50 step, the last one run
        round_s["iteration"] = statistics.median(iterations)
        times["iteration"].append(round_s["iteration"])
        times["iteration (mean)"].append(statistics.mean(iterations))
        round_s["per_iteration"] = (round_s["constrained50"] - round_s["constrained20"]) / 30
        for name, (num, den) in RATIOS.items():
            ratios[name].append(round_s[num] / round_s[den])
    clock.close()
    med = {name: statistics.median(t) for name, t in times.items()}
    med["per_iteration"] = (med["constrained50"] - med["constrained20"]) / 30
    return {"median_s": med, "all_s": times, "ratios": ratios, "itn": itn,
            "parameters": setup["parameters"], "k": setup["k"]}


#: The time ratios reported, each computed within a round: name -> (numerator, denominator).
RATIOS = {
    "LSMR iteration (median in the step) / VJP (backward alone)": ("iteration", "vjp"),
    "LSMR iteration (median in the step) / forward + VJP": ("iteration", "forward+vjp"),
    "(step(50) - step(20)) / 30 / VJP": ("per_iteration", "vjp"),
    "constrained step (maxiter 20) / unconstrained step": ("constrained20", "unconstrained"),
    "constrained step (maxiter 50) / unconstrained step": ("constrained50", "unconstrained"),
    "Cooper step / unconstrained step": ("cooper", "unconstrained"),
    "constrained step (maxiter 20) / Cooper step": ("constrained20", "cooper"),
    "constrained step (maxiter 50) / Cooper step": ("constrained50", "cooper"),
}

#: The kinds of step whose peak memory is measured: name -> make_step's (maxiter, cooper).
KINDS = {"unconstrained": (None, False), "cooper": (None, True), "constrained20": (20, False),
         "constrained50": (50, False)}


def memory_child(width: int, device: str, kind: str, model: str = "mlp") -> dict:
    """In a fresh process: peak memory of one step of one kind (a `KINDS` key; bytes)."""
    import torch

    setup = build(width, device, model=model)
    step = make_step(setup, *KINDS[kind])
    step()  # allocates Adam's state; the measured step is the next one
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {"before": before, "peak": torch.cuda.max_memory_allocated()}
    before = _proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    step()
    return {"before": before, "peak": _proc_status("VmHWM")}


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory(width: int, device: str, kind: str, model: str = "mlp") -> dict:
    """`memory_child` in a fresh Python process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import nullspace_scale as s; "
            "print(json.dumps(s.memory_child(int(sys.argv[2]), sys.argv[3], sys.argv[4], "
            "sys.argv[5])))")
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)),
                          str(width), device, kind, model],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mlp", "vit"), default="mlp",
                    help="the 54.7M MLP (output constraint) or the 49.6M ViT (pruning)")
    ap.add_argument("--quick", action="store_true",
                    help="MLP width 1024 (3.4M parameters) / ViT width 256 (3.2M)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parts", action="store_true",
                    help="only time the pieces of an LSMR iteration (J v, J^T u, a vector update)")
    ap.add_argument("--live", action="store_true",
                    help="only list the buffers alive at a constrained step's peak")
    args = ap.parse_args(argv)
    import torch

    if args.model == "vit":
        width = args.width or (256 if args.quick else 768)
    else:
        width = args.width or (1024 if args.quick else 4096)
    label = f"{args.model.upper()} width {width}"
    if args.live:
        live = live_buffers(width, args.device, args.model)
        n_bytes = 4 * live["parameters"]
        print(f"{label}: N = {live['parameters']}, k = {live['k']}; tensors made in one "
              f"constrained step, alive at its peak: {live['peak'] / MB:.1f} MiB = "
              f"{live['peak'] / n_bytes:.2f} vectors of N floats\n")
        print("| made by | where | MiB | vectors of N |\n|---|---|---:|---:|")
        for (func, where), size in sorted(live["alive"].items(), key=lambda item: -item[1]):
            print(f"| `{func}` | `{where}` | {size / MB:.1f} | {size / n_bytes:.2f} |")
        return
    if args.parts:
        med = parts(width, args.device, args.reps, args.model)
        print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads | "
              f"{label} | medians of {args.reps} interleaved rounds\n")
        print("| piece | time (s) | / VJP |\n|---|---:|---:|")
        for name, t in med.items():
            print(f"| {name} | {t:.4f} | {t / med['vjp']:.2f} |")
        return
    t = timings(width, args.device, args.reps, args.model)
    med = t["median_s"]
    mem = {kind: memory(width, args.device, kind, args.model) for kind in KINDS}
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads | {label}: "
          f"{t['parameters'] / 1e6:.1f}M float32 parameters | constraint: "
          f"{t['k']} rows | medians of {args.reps} interleaved rounds | LSMR iterations "
          f"run: {t['itn']}\n")
    print("| figure | median | range over rounds |\n|---|---:|---:|")
    for name in ("vjp", "forward+vjp", "unconstrained", "cooper", "constrained20",
                 "constrained50", "iteration", "iteration (mean)"):
        all_s = t["all_s"][name]
        print(f"| time: {name} (s) | {med[name]:.3f} | {min(all_s):.3f}-{max(all_s):.3f} |")
    print(f"| time: per_iteration (s) | {med['per_iteration']:.3f} | |")
    for name, values in t["ratios"].items():
        print(f"| {name} | {statistics.median(values):.2f} | "
              f"{min(values):.2f}-{max(values):.2f} |")
    unit = "peak RSS" if args.device == "cpu" else "max_memory_allocated"
    for name, m in mem.items():
        print(f"| {unit}: {name} (MiB; {m['before'] / MB:.0f} before the step) | "
              f"{m['peak'] / MB:.0f} | |")
    for name in ("cooper", "constrained20", "constrained50"):
        print(f"| peak memory, {name} / unconstrained | "
              f"{mem[name]['peak'] / mem['unconstrained']['peak']:.2f} | |")


if __name__ == "__main__":
    main()
