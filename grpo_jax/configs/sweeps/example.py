"""Example sweep: closed-form optima of a 4-armed bandit, reverse vs forward KL, over beta.

Run (finishes in about a second; a re-run finds every cell cached)::

  python experiments/sweep.py --sweep grpo_jax/configs/sweeps/example.py --workdir runs/sweep-example \
      --runner grpo_jax.configs.sweeps.example:closed_form_bandit_runner

``:small`` shrinks the grid (used by the tests). Cells differing only in ``seed`` and
``loss.beta`` (the runner's ``vmappable_keys``) form one population, so the grid below is
2 groups (one per divergence) x the learning-rate/warm-up pairs of the zipped axis.
"""

import ml_collections
import numpy as np

from grpo_jax.run.config_utils import parse_arg
from grpo_jax.run.sweep import zip_axis
from grpo_jax.tasks.bandit import bandit_optimum


def get_sweep(arg=None):
    small = parse_arg(arg, small=False)["small"]
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


def closed_form_bandit_runner(static_config: ml_collections.ConfigDict, cells: list) -> list[dict]:
    """Demo runner: the closed-form optimum of a bandit, one population per divergence.

    Needs ``static_config.bandit.rewards`` ``[A]``, ``static_config.bandit.ref`` ``[A]`` and
    ``static_config.loss.divergence``; each cell gives ``loss.beta`` and ``seed``. The seed
    only adds ``noise`` (``static_config.bandit.noise``) to the reported reward, so that a
    sweep over seeds has something to average. Vectorised over the cells, like a vmapped
    trainer population.
    """
    rewards = np.asarray(static_config.bandit.rewards, np.float64)
    ref = np.asarray(static_config.bandit.ref, np.float64)
    beta = np.array([c.loss.beta for c in cells], np.float64)
    pi = bandit_optimum(rewards, ref, beta, static_config.loss.divergence)
    kl_rev = (pi * (np.log(pi) - np.log(ref)[None, :])).sum(axis=1)
    kl_fwd = (ref[None, :] * (np.log(ref)[None, :] - np.log(pi))).sum(axis=1)
    reward = pi @ rewards
    noise = float(static_config.bandit.get("noise", 0.0))
    out = []
    for n, c in enumerate(cells):
        eps = np.random.default_rng(int(c.seed)).normal() * noise
        out.append(
            {
                "policy": pi[n].tolist(),
                "reward": float(reward[n] + eps),
                "exact_kl_rev": float(kl_rev[n]),
                "exact_kl_fwd": float(kl_fwd[n]),
                "objective_check": float(
                    reward[n]
                    - c.loss.beta
                    * (kl_rev[n] if static_config.loss.divergence == "reverse" else kl_fwd[n])
                ),
            }
        )
    return out


closed_form_bandit_runner.vmappable_keys = ("seed", "loss.beta")
