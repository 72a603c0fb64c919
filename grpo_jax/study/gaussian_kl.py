"""Fit one Gaussian to a two-component mixture by forward and by reverse KL.

Entry point: experiments/gaussian_kl.py (config grpo_jax/configs/gaussian_kl.py); the study's
report includes its figure (`grpo_jax.study.pipeline`).

p = 0.5 N(0, 1) + 0.5 N(mu2, 1), q = N(m, s). Forward KL[p || q] is minimised by moment
matching (m = mu2/2, s^2 = 1 + mu2^2/4); reverse KL[q || p] straddles both modes while they
are close and locks onto one (KL -> log 2) once they separate. Both fits are done with
optax (L-BFGS) on a Gauss-Hermite quadrature (101 nodes), the reverse fit from several
initialisations (vmapped) keeping the best. `plot` draws one panel per mu2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOG_2PI = float(np.log(2 * np.pi))


def gauss_hermite(n):
    """Nodes z and weights w with sum_i w_i f(z_i) ~= E_{z ~ N(0, 1)}[f(z)] (n nodes)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return jnp.asarray(z), jnp.asarray(w / np.sqrt(2 * np.pi))


def log_normal(x, m, s):
    return -0.5 * jnp.square((x - m) / s) - jnp.log(s) - 0.5 * LOG_2PI


def log_mixture(x, mu2):
    both = jnp.stack([log_normal(x, 0.0, 1.0), log_normal(x, mu2, 1.0)])
    return jax.nn.logsumexp(both, axis=0) + jnp.log(0.5)


def kl_fit_objective(params, mu2, direction, z, w):
    """KL between p and q = N(params["m"], exp(params["log_s"])) by Gauss-Hermite quadrature.

    The quadrature follows the distribution the expectation is under, so it stays accurate
    for any (m, s): forward ``KL[p || q] = E_p[log p - log q]`` with nodes on each mixture
    component (0.5 E_N(0,1) + 0.5 E_N(mu2,1)); reverse ``KL[q || p] = E_q[log q - log p]``
    with nodes ``m + s z``. Integrands are smooth (log-densities), so n ~ 100 nodes give
    machine precision.
    """
    m, s = params["m"], jnp.exp(params["log_s"])
    if direction == "forward":
        x = jnp.concatenate([z, mu2 + z])
        wx = jnp.concatenate([0.5 * w, 0.5 * w])
        return jnp.sum(wx * (log_mixture(x, mu2) - log_normal(x, m, s)))
    x = m + s * z
    return jnp.sum(w * (log_normal(x, m, s) - log_mixture(x, mu2)))


@functools.partial(jax.jit, static_argnames=("direction", "steps", "nodes"))
def fit_all(mu2, inits, *, direction, steps=100, nodes=101):
    """Minimise the KL from every init (vmapped L-BFGS): returns m, s, KL, each [n].

    Args:
      mu2: scalar, the second mode's mean (traced: one compilation for every mu2).
      inits: ``[n, 2]`` (m, s) initialisations.
      direction: "forward" (KL[p || q]) or "reverse" (KL[q || p]).
    """
    z, w = gauss_hermite(nodes)
    dtype = inits.dtype
    z, w = z.astype(dtype), w.astype(dtype)
    f = lambda p: kl_fit_objective(p, mu2, direction, z, w)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    def run(init):
        params = {"m": init[0], "log_s": jnp.log(init[1])}

        def step(carry, _):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), length=steps)
        return params["m"], jnp.exp(params["log_s"]), f(params)

    return jax.vmap(run)(inits)


def fit(mu2, direction, inits, *, steps=100, nodes=101):
    """The best (m, s, KL) over the initialisations ``inits [n, 2]``."""
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse'; got {direction!r}.")
    inits = jnp.asarray(inits, jnp.result_type(float))
    m, s, kl = fit_all(
        jnp.asarray(mu2, inits.dtype), inits, direction=direction, steps=steps, nodes=nodes
    )
    kl = jnp.where(jnp.isfinite(kl), kl, jnp.inf)
    best = int(jnp.argmin(kl))
    return float(m[best]), float(s[best]), float(kl[best])


def make_inits(mu2, m_fractions, s_values):
    """Initial (m, s) of the fits: means at fractions of mu2 (shifted), each s value."""
    return np.array([(f * mu2 + (f - 0.5), s) for f in m_fractions for s in s_values])


def run_all(config):
    """Both fits for every mu2 of `config` (grpo_jax/configs/gaussian_kl.py) -> rows."""
    rows = []
    for mu2 in config.mu2:
        inits = make_inits(mu2, config.init_m_fraction, config.init_s)
        for direction in ("forward", "reverse"):
            # Forward KL is convex in (m, log s): one init suffices, but all are cheap.
            m, s, kl_value = fit(
                mu2, direction, inits, steps=config.steps, nodes=config.quadrature_nodes
            )
            rows.append(dict(mu2=float(mu2), direction=direction, m=m, s=s, kl=kl_value))
    return rows


def plot(rows, path):
    """The fits of `run_all` drawn over the mixture, one panel per mu2, saved to `path`."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    mu2s = sorted({r["mu2"] for r in rows})
    fig, axes = plt.subplots(1, len(mu2s), figsize=(4 * len(mu2s), 4.2), sharey=True)
    for ax, mu2 in zip(np.atleast_1d(axes), mu2s):
        x = np.linspace(-5, mu2 + 5, 600)
        ax.fill_between(
            x,
            np.exp(np.asarray(log_mixture(jnp.asarray(x), mu2))),
            color="0.8",
            label="p (mixture)",
        )
        for r in rows:
            if r["mu2"] != mu2:
                continue
            style = {"forward": ("tab:blue", "-"), "reverse": ("tab:red", "--")}[r["direction"]]
            q = np.exp(np.asarray(log_normal(jnp.asarray(x), r["m"], r["s"])))
            ax.plot(
                x,
                q,
                color=style[0],
                linestyle=style[1],
                label=f"{r['direction']}: m={r['m']:.2f}, s={r['s']:.2f}, "
                f"KL={max(r['kl'], 0.0):.3f}",
            )
        ax.set_title(f"mu2 = {mu2:g}")
        ax.set_ylim(0, 0.55)
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="upper right")
    np.atleast_1d(axes)[0].set_ylabel("density")
    fig.suptitle("One Gaussian fitted to 0.5 N(0,1) + 0.5 N(mu2,1): forward vs reverse KL")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
