"""The hypothesis experiment: does the KL choice matter only for multimodal references?

Run (default: small, about 15 minutes on 2 CPU cores including compiles, 5 seeds per cell):

  python experiments/hypothesis.py --workdir runs/hypothesis
  python experiments/hypothesis.py --workdir runs/hypothesis-full --config configs/hypothesis.py:full
  python experiments/hypothesis.py --workdir runs/t --config configs/hypothesis.py:tiny  # tests

For each task and each point on its modality dial, one vmapped GRPO population holds every
KL choice x beta x seed (plus beta = 0, the "none" baseline): one compiled program per
(task, modality). `configs/sweeps/hypothesis.py` turns this config into the sweep grid.

Reward designs (chosen so the KL choice has something to decide):
  bandit      graded reward on the region of the *last* mode (distance to its centre,
              reaching 0 at `reward_width`): with several modes the policy must move mass
              away from the others, and the regulariser decides how much it keeps;
  arithmetic  correctness, with a bonus for answers of the last mode (a preference among
              valid answers); unimodal = one canonical pair;
  format      correctness only; unimodal = 100/0 direct format, multimodal = 50/50.
"""

import ml_collections

from grpo_jax.config_utils import parse_arg

KL_CHOICES = ("k1/loss", "k2/loss", "k3/loss", "k1/reward", "k2/reward", "k3/reward",
              "k3_st/loss", "fwd_nonneg/loss", "exact_fwd/loss", "exact_rev/loss")
NONE_CHOICE = "k1/loss"  # the estimator run at beta = 0 (the KL term is then inert)


def _bandit(label, multimodal, **fields):
    task = dict(num_tokens=64, sigma=3.0, reward_kind="distance", reward_width=6.0, **fields)
    return dict(task_label="bandit", modality=label, multimodal=multimodal,
                task=("bandit", task), grpo=dict(num_prompts=1, group_size=16))


def _modalities(full: bool, tiny: bool):
    bandit = [
        _bandit("1 mode", False, num_modes=1),
        _bandit("2 modes, 3σ apart", True, num_modes=2, separation=3.0),
        _bandit("2 modes, 8σ apart", True, num_modes=2, separation=8.0),
        _bandit("4 modes, 5σ apart", True, num_modes=4, separation=5.0),
    ]
    if full:
        bandit.insert(2, _bandit("2 modes, 5.5σ apart", True, num_modes=2, separation=5.5))
    arith_grpo = dict(num_prompts=4, group_size=8)
    arithmetic = [
        dict(task_label="arithmetic", modality="1 canonical pair", multimodal=False,
             task=("arithmetic", dict(num_modes=1)), grpo=arith_grpo),
        dict(task_label="arithmetic", modality="2 pairs", multimodal=True,
             task=("arithmetic", dict(num_modes=2, preferred_mode=1, preference_bonus=0.5)),
             grpo=arith_grpo),
        dict(task_label="arithmetic", modality="4 pairs", multimodal=True,
             task=("arithmetic", dict(num_modes=4, preferred_mode=3, preference_bonus=0.5)),
             grpo=arith_grpo),
    ]
    fmt = [
        dict(task_label="format", modality="100/0", multimodal=False,
             task=("format", dict(num_digits=2, format_weights=(1.0, 0.0))),
             grpo=dict(num_prompts=4, group_size=8)),
        dict(task_label="format", modality="50/50", multimodal=True,
             task=("format", dict(num_digits=2, format_weights=(0.5, 0.5))),
             grpo=dict(num_prompts=4, group_size=8)),
    ]
    if tiny:  # one modality per multimodal flag, bandit only, small batch
        return [dict(m, grpo=dict(num_prompts=1, group_size=8)) for m in (bandit[0], bandit[2])]
    if not full:  # default: drop the middle arithmetic point (2 and 4 modes live in the bandit)
        arithmetic = [arithmetic[0], arithmetic[2]]
    return bandit + arithmetic + fmt


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: comma-separated; "" (default, small), "full" (publication scale, GPU), "tiny"
    (tests), and "std": GRPO's own std-scaled advantages instead of leave-one-out (to see
    how much the std scaling hides the KL choice), e.g. `configs/hypothesis.py:std`."""
    opts = parse_arg(arg, full=False, tiny=False, std=False)
    full, tiny = opts["full"], opts["tiny"]
    c = ml_collections.ConfigDict()
    c.name = ",".join(sorted(k for k, v in opts.items() if v)) or "default"
    c.kl_choices = list(KL_CHOICES)
    c.none_choice = NONE_CHOICE
    c.betas = [0.05, 0.1, 0.2, 0.4] if full else [0.1, 0.4]
    c.num_seeds = 16 if full else 5
    c.modalities = _modalities(full, tiny)
    # Shared GRPO settings (configs/grpo.py fields; each modality may override grpo.*).
    c.model = dict(num_layers=2, width=64, num_heads=2, mlp_width=256) if full else \
        dict(num_layers=1, width=32, num_heads=2, mlp_width=64)
    c.reference = dict(steps=2000 if full else 1500, batch_size=256, lr=3e-3, chunk_steps=100)
    c.optim = dict(lr=1e-3 if full else 3e-3)
    c.train = dict(num_steps=1000 if full else 120, chunk_steps=100 if full else 30,
                   checkpoint_every_chunks=1000)
    # Unbiased advantages (leave-one-out baseline, no std scaling): the objective is then
    # exactly E[R] - beta * D, so final policies can be set against the closed-form optima.
    # (With GRPO's std scaling the effective reward scale grows as the group's rewards
    # agree, and every run collapses onto the reward's peak whatever its KL term.)
    c.loss = dict(eps_low=0.2, eps_high=0.2,
                  advantage_estimator="grpo" if opts["std"] else "rloo")
    c.eval = dict(ks=[1, 2, 4, 8, 16], num_samples=2048 if full else 512, seed=0)
    c.gaussian = dict(mu2=(0.0, 2.5, 5.0, 7.5, 10.0), steps=100)  # configs/gaussian_kl.py
    if tiny:
        c.gaussian = dict(mu2=(2.5, 7.5), steps=20, init_m_fraction=(0.0, 0.5), init_s=(1.0,))
        c.kl_choices = ["k3/loss", "exact_fwd/loss", "exact_rev/loss"]
        c.betas = [0.2]
        c.num_seeds = 2
        c.model.update(width=16, mlp_width=32)
        c.reference.update(steps=50, chunk_steps=50)
        c.train.update(num_steps=6, chunk_steps=6)
        c.eval.ks = [1, 4]
    return c
