"""LSQR recurrences (Paige & Saunders 1982), following SciPy's ``lsqr`` step for step.

State is a dict so the same functions serve a Python loop and
``jax.lax.while_loop``. ``istop < 0`` marks a column still iterating. The
scalar recurrences run in normalised units (`lsqdiff._stopping`): ``a``,
``bt`` and ``damp`` below are ``alpha / sa``, ``beta / sa`` and ``damp / sa``.
"""

from __future__ import annotations

from typing import Any

from . import _bidiag, _dual
from ._stopping import Problem, choose_stop, freeze, lsqr_guard, start

State = dict[str, Any]


def init(p: Problem, b: Any, x0: Any, calc_var: bool = False, dual: bool = False) -> State:
    """The state before the first iteration; ``calc_var`` also accumulates
    SciPy's ``var``, ``dual`` tracks ``z`` with ``A^H z = x - x0`` (`lsqdiff._dual`)."""
    S = p.S
    st = start(p, b, x0)
    a, bt = st.pop("alpha1"), st.pop("beta1")
    zero = S.const(0.0)
    V = p.vec
    beta = bt * st["sb"]
    st.update(
        w=V.own(st["v"]), rhobar=a, phibar=bt,
        ddnorm=zero, res2=zero, xxnorm=zero, z=zero, cs2=S.const(-1.0), sn2=zero,
        guard=lsqr_guard(S, st["sa"], st["sb"]), itn=S.int_const(0),
        normr=beta, r1norm=beta, normar=st["alpha"] * beta, norma=zero, conda=zero, normx=zero,
        norma_n=zero,
    )
    if calc_var:
        st["var"] = p.zeros_x()
    if dual:
        d = _dual.start(S, V, st["u"], st["alpha"], p.zeros_b())
        st.update(d, zw=V.own(d["zv"]))
    return st


def step(p: Problem, st: State) -> State:
    S, V = p.S, p.vec
    sa, sb, damp = st["sa"], st["sb"], st["damp"]
    active = st["istop"] < 0
    itn = st["itn"] + 1
    dampsq = damp * damp
    alpha_old = st["alpha"]
    u, v, alpha, beta = _bidiag.step(p.op, st["u"], st["v"], alpha_old, S, p.norm, V)
    a_old, a, bt = alpha_old / sa, alpha / sa, beta / sa
    finite = S.isfinite(a + bt)
    if V.inplace and not finite:  # keep x: the update below would overwrite it
        return freeze(S, st, {**st, "u": u, "v": v, "itn": itn}, active, finite)
    norma = S.where(bt > 0, S.sqrt(st["norma_n"] ** 2 + a_old ** 2 + bt ** 2 + dampsq),
                    st["norma_n"])

    # A rotation eliminates the damping parameter (skipped when damp = 0, as in SciPy).
    damped = damp > 0
    rhobar1 = S.where(damped, S.sqrt(st["rhobar"] ** 2 + dampsq), st["rhobar"])
    cs1 = S.div(st["rhobar"], rhobar1)
    psi = S.where(damped, S.div(damp, rhobar1) * st["phibar"], 0.0)
    phibar = S.where(damped, cs1 * st["phibar"], st["phibar"])

    cs, sn, rho = _bidiag.sym_ortho(S, rhobar1, bt)
    theta = sn * a
    rhobar = -cs * a
    phi = cs * phibar
    phibar = sn * phibar
    tau = sn * phi

    c_x, c_w = S.div(phi, rho) * st["sx"], S.div(theta, rho)  # x is in the problem's units

    def directions(norm: Any, w: Any, x: Any, *rest: Any) -> tuple[tuple, tuple]:
        *var, v = rest  # SciPy's var, when asked for, then v
        normw = norm(w)
        if var:
            dk = V.scaled(S.div(1.0, rho * sa), w)
            var = [V.axpy(1.0, S.where(active, dk * dk, 0.0), var[0])]
        x = V.axpy(c_x, w, x)
        return (V.xpay(v, -c_w, w), x, *var), (normw,)  # w overwritten last

    var_in = (st["var"],) if "var" in st else ()
    (w, x, *var), (normw,) = V.sweep(directions, (st["w"], st["x"], *var_in, v), p.norm)
    if "zx" in st:  # the dual: the same updates on the preimages under A^H
        zv = _dual.advance(S, V, st["zv"], u, alpha, beta)
        dual = dict(zv=zv, zx=V.axpy(c_x, st["zw"], st["zx"]), zw=V.xpay(zv, -c_w, st["zw"]))
    normdk = S.div(normw, S.abs(rho))
    ddnorm = st["ddnorm"] + normdk * normdk

    delta = st["sn2"] * rho
    gambar = -st["cs2"] * rho
    rhs = phi - delta * st["z"]
    zbar = S.div(rhs, gambar)
    normx = S.sqrt(st["xxnorm"] + zbar * zbar)
    gamma = S.sqrt(gambar * gambar + theta * theta)
    cs2 = S.div(gambar, gamma)
    sn2 = S.div(theta, gamma)
    z = S.div(rhs, gamma)
    xxnorm = st["xxnorm"] + z * z

    conda = norma * S.sqrt(ddnorm)
    res2 = st["res2"] + psi * psi
    normr = S.sqrt(phibar * phibar + res2)
    normar = a * S.abs(tau)
    r1sq = normr * normr - dampsq * xxnorm
    r1abs = S.sqrt(S.abs(r1sq))
    r1norm = S.where(damped, S.where(r1sq < 0, -r1abs, r1abs), normr)

    istop = choose_stop(p, itn=itn, normr=normr, normar=normar, norma=norma,
                        conda=conda, normx=normx, normb=st["normb"], guard=st["guard"])
    # x may have overflowed though alpha and beta did not: its solution is out of range.
    finite = S.logical_and(finite, S.isfinite(normx * st["sx"]))
    new = dict(
        st, x=x, u=u, v=v, w=w, alpha=alpha, rhobar=rhobar, phibar=phibar,
        ddnorm=ddnorm, res2=res2, xxnorm=xxnorm, z=z, cs2=cs2, sn2=sn2,
        istop=istop, itn=itn, norma_n=norma,
        # Diagnostics in the problem's units.
        normr=normr * sb, r1norm=r1norm * sb, normar=normar * sa * sb, norma=norma * sa,
        conda=conda, normx=normx * st["sx"],
    )
    if var:
        new["var"] = var[0]
    if "zx" in st:
        new.update(dual)
    return freeze(S, st, new, active, finite)
