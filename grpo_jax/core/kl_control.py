"""The target-KL controller: beta moved each step toward a declared KL per token.

    beta = update(beta, measured_kl, target, rate)        # pure, elementwise (vmap it)

Used by the GRPO step (`rl.train.RLSetup.kl_control`, `RLState.beta`); configured by
`config.kl_control` (docs/design.md, 'The target-KL controller').
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# What the target-KL controller holds (`RLSetup.kl_control`): "" off, else the step metric.
KL_CONTROL = {
    "": None,
    "exact_rev": "exact_kl_rev",
    "exact_fwd": "exact_kl_fwd",
    "estimate": "kl_mean",
}
# The controlled beta stays within these (positive and finite whatever the target).
BETA_RANGE = (1e-6, 1e3)


def update(beta, measured, target, rate):
    """One step of the target-KL controller, proportional on log beta (the adaptive KL
    controllers of PPO/verl/OpenRLHF, in log space):

        log beta <- log beta + rate * clip(measured / target - 1, -1, 1),

    beta kept in `BETA_RANGE`; unchanged where `target` <= 0 (a member with a fixed beta)
    or `measured` is not finite. Pure and elementwise (vmap over a population)."""
    target = jnp.asarray(target, jnp.float32)
    ok = (target > 0) & jnp.isfinite(measured)
    err = jnp.clip(measured / jnp.where(target > 0, target, 1.0) - 1.0, -1.0, 1.0)
    log_b = jnp.log(beta) + rate * jnp.where(ok, err, 0.0)
    lo, hi = (float(np.log(b)) for b in BETA_RANGE)
    return jnp.where(ok, jnp.exp(jnp.clip(log_b, lo, hi)), beta).astype(jnp.float32)
