"""LSMR recurrences (Fong & Saunders 2011), following SciPy's ``lsmr`` step for step.

State is a dict so the same functions serve a Python loop and
``jax.lax.while_loop``. ``istop < 0`` marks a column still iterating. The
scalar recurrences run in normalised units (`lsqdiff._stopping`): ``a``,
``bt`` and ``damp`` below are ``alpha / sa``, ``beta / sa`` and ``damp / sa``.
"""

from __future__ import annotations

import math
from typing import Any

from . import _bidiag, _dual
from ._stopping import Problem, choose_stop, freeze, start

State = dict[str, Any]


def init(p: Problem, b: Any, x0: Any, dual: bool = False) -> State:
    """The state before the first iteration; ``dual`` also tracks
    ``z`` with ``A^H z = x - x0`` for the gradient of an undamped solve (`lsqdiff._dual`)."""
    S = p.S
    st = start(p, b, x0)
    a, bt = st.pop("alpha1"), st.pop("beta1")
    one, zero = S.const(1.0), S.const(0.0)
    V = p.vec
    st.update(
        h=V.own(st["v"]), hbar=p.zeros_x(),
        alphabar=a, zetabar=a * bt, rho=one, rhobar=one, cbar=one, sbar=zero,
        betadd=bt, betad=zero, rhodold=one, tautildeold=zero, thetatilde=zero,
        # No maximum or minimum of rhobar yet (SciPy starts them at 1, its first
        # rhobar, and 1e100: neither is free of scale).
        zeta=zero, d=zero, normA2=a * a, maxrbar=zero, minrbar=S.const(math.inf),
        itn=S.int_const(0),
        normr=bt * st["sb"], normar=a * st["sa"] * bt * st["sb"], norma=st["alpha"],
        conda=one, normx=zero,
    )
    if dual:
        d = _dual.start(S, V, st["u"], st["alpha"], p.zeros_b())
        st.update(d, zh=V.own(d["zv"]), zhbar=p.zeros_b())
    return st


def step(p: Problem, st: State) -> State:
    S, V = p.S, p.vec
    sa, damp = st["sa"], st["damp"]
    active = st["istop"] < 0
    itn = st["itn"] + 1
    u, v, alpha, beta = _bidiag.step(p.op, st["u"], st["v"], st["alpha"], S, p.norm, V)
    a, bt = alpha / sa, beta / sa
    finite = S.isfinite(a + bt)
    if V.inplace and not finite:  # keep x: the update below would overwrite it
        return freeze(S, st, {**st, "u": u, "v": v, "itn": itn}, active, finite)

    # Rotation Qhat eliminates the damping; Q turns B into R; Qbar turns R^T into Rbar.
    chat, shat, alphahat = _bidiag.sym_ortho(S, st["alphabar"], damp)
    rhoold = st["rho"]
    c, s, rho = _bidiag.sym_ortho(S, alphahat, bt)
    thetanew = s * a
    alphabar = c * a
    rhobarold = st["rhobar"]
    zetaold = st["zeta"]
    thetabar = st["sbar"] * rho
    rhotemp = st["cbar"] * rho
    cbar, sbar, rhobar = _bidiag.sym_ortho(S, st["cbar"] * rho, thetanew)
    zeta = cbar * st["zetabar"]
    zetabar = -sbar * st["zetabar"]

    c_hbar = S.div(thetabar * rho, rhoold * rhobarold)
    c_x = S.div(zeta, rho * rhobar) * st["sx"]  # x is in the problem's units
    c_h = S.div(thetanew, rho)

    def directions(norm: Any, h: Any, hbar: Any, x: Any, v: Any) -> tuple[tuple, tuple]:
        hbar = V.xpay(h, -c_hbar, hbar)  # first: it reads the old h
        x = V.axpy(c_x, hbar, x)
        return (V.xpay(v, -c_h, h), hbar, x), (norm(x),)

    (h, hbar, x), (normx,) = V.sweep(directions, (st["h"], st["hbar"], st["x"], v), p.norm)

    # Estimate ||r|| by applying Qhat, Q and Qtilde to the right-hand side.
    betaacute = chat * st["betadd"]
    betacheck = -shat * st["betadd"]
    betahat = c * betaacute
    betadd = -s * betaacute
    thetatildeold = st["thetatilde"]
    ctildeold, stildeold, rhotildeold = _bidiag.sym_ortho(S, st["rhodold"], thetabar)
    thetatilde = stildeold * rhobar
    rhodold = ctildeold * rhobar
    betad = -stildeold * st["betad"] + ctildeold * betahat
    tautildeold = S.div(zetaold - thetatildeold * st["tautildeold"], rhotildeold)
    taud = S.div(zeta - thetatilde * tautildeold, rhodold)
    d = st["d"] + betacheck * betacheck
    normr = S.sqrt(d + (betad - taud) ** 2 + betadd * betadd)

    # Estimate ||A|| and cond(A).
    normA2 = st["normA2"] + bt * bt
    norma = S.sqrt(normA2)
    normA2 = normA2 + a * a
    first = itn == 1
    maxrbar = S.where(first, st["maxrbar"], S.maximum(st["maxrbar"], rhobarold))
    minrbar = S.where(first, st["minrbar"], S.minimum(st["minrbar"], rhobarold))
    conda = S.div(S.maximum(maxrbar, rhotemp), S.minimum(minrbar, rhotemp))

    normar = S.abs(zetabar)
    normx_n = S.div(normx, st["sx"])
    istop = choose_stop(p, itn=itn, normr=normr, normar=normar, norma=norma,
                        conda=conda, normx=normx_n, normb=st["normb"])
    # x may have overflowed though alpha and beta did not: its solution is out of range.
    finite = S.logical_and(finite, S.isfinite(normx_n))

    new = dict(
        st, x=x, u=u, v=v, h=h, hbar=hbar, alpha=alpha, alphabar=alphabar,
        zetabar=zetabar, rho=rho, rhobar=rhobar, cbar=cbar, sbar=sbar,
        betadd=betadd, betad=betad, rhodold=rhodold, tautildeold=tautildeold,
        thetatilde=thetatilde, zeta=zeta, d=d, normA2=normA2, maxrbar=maxrbar,
        minrbar=minrbar, istop=istop, itn=itn,
        # Diagnostics in the problem's units.
        normr=normr * st["sb"], normar=normar * sa * st["sb"], norma=norma * sa,
        conda=conda, normx=normx,
    )
    if "zx" in st:  # the dual: the same updates on the preimages under A^H
        zv = _dual.advance(S, V, st["zv"], u, alpha, beta)
        zhbar = V.xpay(st["zh"], -c_hbar, st["zhbar"])
        new.update(zv=zv, zhbar=zhbar, zx=V.axpy(c_x, zhbar, st["zx"]),
                   zh=V.xpay(zv, -c_h, st["zh"]))
    return freeze(S, st, new, active, finite)
