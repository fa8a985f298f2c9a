"""LSMR recurrences (Fong & Saunders 2011), following SciPy's ``lsmr`` step for step.

State is a dict so the same functions serve a Python loop and
``jax.lax.while_loop``. ``istop < 0`` marks a column still iterating.
"""

from __future__ import annotations

from typing import Any

from . import _bidiag, _dual
from ._stopping import Problem, choose_stop, freeze, start

State = dict[str, Any]


def init(p: Problem, b: Any, x0: Any, dual: bool = False) -> State:
    """The state before the first iteration; ``dual`` also tracks
    ``z`` with ``A^H z = x - x0`` for the gradient of an undamped solve (`lsqdiff._dual`)."""
    S = p.S
    x, u, v, alpha, beta, normb, istop = start(p, b, x0)
    normar = alpha * beta
    one, zero = S.const(1.0), S.const(0.0)
    V = p.vec
    st = dict(
        x=x, u=u, v=v, h=V.own(v), hbar=p.zeros_x(), alpha=alpha,
        alphabar=alpha, zetabar=normar, rho=one, rhobar=one, cbar=one, sbar=zero,
        betadd=beta, betad=zero, rhodold=one, tautildeold=zero, thetatilde=zero,
        zeta=zero, d=zero, normA2=alpha * alpha, maxrbar=zero, minrbar=S.const(S.big),
        normb=normb, istop=istop, itn=S.int_const(0),
        normr=beta, normar=normar, norma=alpha, conda=one, normx=zero,
    )
    if dual:
        d = _dual.start(S, u, alpha, p.zeros_b())
        st.update(d, zh=V.own(d["zv"]), zhbar=p.zeros_b())
    return st


def step(p: Problem, st: State) -> State:
    S, V, damp = p.S, p.vec, p.damp
    active = st["istop"] < 0
    itn = st["itn"] + 1
    u, v, alpha, beta = _bidiag.step(p.op, st["u"], st["v"], st["alpha"], S, p.norm, V)
    finite = S.isfinite(alpha + beta)
    if V.inplace and not finite:  # keep x: the update below would overwrite it
        return freeze(S, st, {**st, "u": u, "v": v, "itn": itn}, active, finite)

    # Rotation Qhat eliminates the damping; Q turns B into R; Qbar turns R^T into Rbar.
    chat, shat, alphahat = _bidiag.sym_ortho(S, st["alphabar"], damp)
    rhoold = st["rho"]
    c, s, rho = _bidiag.sym_ortho(S, alphahat, beta)
    thetanew = s * alpha
    alphabar = c * alpha
    rhobarold = st["rhobar"]
    zetaold = st["zeta"]
    thetabar = st["sbar"] * rho
    rhotemp = st["cbar"] * rho
    cbar, sbar, rhobar = _bidiag.sym_ortho(S, st["cbar"] * rho, thetanew)
    zeta = cbar * st["zetabar"]
    zetabar = -sbar * st["zetabar"]

    c_hbar = S.div(thetabar * rho, rhoold * rhobarold)
    c_x = S.div(zeta, rho * rhobar)
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
    normA2 = st["normA2"] + beta * beta
    norma = S.sqrt(normA2)
    normA2 = normA2 + alpha * alpha
    maxrbar = S.maximum(st["maxrbar"], rhobarold)
    minrbar = S.where(itn > 1, S.minimum(st["minrbar"], rhobarold), st["minrbar"])
    conda = S.div(S.maximum(maxrbar, rhotemp), S.minimum(minrbar, rhotemp))

    normar = S.abs(zetabar)
    istop = choose_stop(p, itn=itn, normr=normr, normar=normar, norma=norma,
                        conda=conda, normx=normx, normb=st["normb"])

    new = dict(
        x=x, u=u, v=v, h=h, hbar=hbar, alpha=alpha, alphabar=alphabar,
        zetabar=zetabar, rho=rho, rhobar=rhobar, cbar=cbar, sbar=sbar,
        betadd=betadd, betad=betad, rhodold=rhodold, tautildeold=tautildeold,
        thetatilde=thetatilde, zeta=zeta, d=d, normA2=normA2, maxrbar=maxrbar,
        minrbar=minrbar, normb=st["normb"], istop=istop, itn=itn,
        normr=normr, normar=normar, norma=norma, conda=conda, normx=normx,
    )
    if "zx" in st:  # the dual: the same updates on the preimages under A^H
        zv = _dual.advance(S, V, st["zv"], u, alpha, beta)
        zhbar = V.xpay(st["zh"], -c_hbar, st["zhbar"])
        new.update(zv=zv, zhbar=zhbar, zx=V.axpy(c_x, zhbar, st["zx"]),
                   zh=V.xpay(zv, -c_h, st["zh"]))
    return freeze(S, st, new, active, finite)
