"""Example sweep: closed-form optima of a 4-armed bandit, reverse vs forward KL, over beta.

Run (finishes in about a second; a re-run finds every cell cached)::

  python experiments/sweep.py --sweep configs/sweeps/example.py --workdir runs/sweep-example \
      --runner grpo_jax.sweep:closed_form_bandit_runner

``:small`` shrinks the grid (used by the tests). Cells differing only in ``seed`` and
``loss.beta`` (the runner's ``vmappable_keys``) form one population, so the grid below is
2 groups (one per divergence) x the learning-rate/warm-up pairs of the zipped axis.
"""

import ml_collections

from grpo_jax.sweep import zip_axis


def get_sweep(arg=None):
    small = arg == "small"
    base = ml_collections.ConfigDict()
    base.seed = 0
    base.bandit = ml_collections.ConfigDict()
    base.bandit.rewards = (1.0, 0.8, 0.2, 0.0)
    base.bandit.ref = (0.1, 0.2, 0.3, 0.4)
    base.bandit.noise = 0.01
    base.loss = ml_collections.ConfigDict()
    base.loss.divergence = "reverse"
    base.loss.beta = 0.1
    # Unused by the closed form; shows a zipped axis (values move together).
    base.optim = ml_collections.ConfigDict()
    base.optim.lr = 1e-3
    base.optim.warmup = 10

    axes = [
        ("loss.divergence", ["reverse", "forward"]),
        (
            zip_axis({"optim.lr": [1e-3], "optim.warmup": [10]})
            if small
            else zip_axis({"optim.lr": [1e-3, 3e-4], "optim.warmup": [10, 100]})
        ),
        ("loss.beta", [0.1, 1.0] if small else [0.03, 0.1, 0.3, 1.0]),
        ("seed", [0, 1] if small else [0, 1, 2, 3, 4]),
    ]
    return base, axes
