"""Config of the Gaussian fit (experiments/gaussian_kl.py).

  python experiments/gaussian_kl.py --config grpo_jax/configs/gaussian_kl.py --workdir runs/gaussian_kl

Fits q = N(m, s) to p = 0.5 N(0, 1) + 0.5 N(mu2, 1) by forward and reverse KL.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.x64 = True
    c.mu2 = (0.0, 2.5, 5.0, 7.5, 10.0)
    # Gauss-Hermite nodes (placed on the distribution the expectation is under).
    c.quadrature_nodes = 101
    # Optimiser: optax L-BFGS (zoom line search), run for `steps` steps from every init.
    c.steps = 100
    # Initialisations (m as a fraction of mu2 plus an offset, s); the best fit is kept.
    c.init_m_fraction = (0.0, 0.25, 0.5, 0.75, 1.0)
    c.init_s = (0.7, 2.0)
    return c
