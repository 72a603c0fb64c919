"""Config of the gradient audit (experiments/gradient_audit.py).

  python experiments/gradient_audit.py --config grpo_jax/configs/gradient_audit.py --workdir runs/audit
  python experiments/gradient_audit.py --config grpo_jax/configs/gradient_audit.py:seed=3 \
      --config.token.vocab_size=8 --workdir runs/audit-v8

The argument after ':' is a comma-separated list of `key=value` overrides of top-level
integer fields (e.g. `seed=3`); any field can also be set with `--config.FIELD=VALUE`.
"""

import ml_collections

from grpo_jax.run.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.x64 = True  # exact enumeration in float64 (kl math itself is float32 by default)
    c.estimators = ("k1", "k2", "k3", "fwd_rlogr", "fwd_nonneg", "k1_st", "k3_st")

    # Token level: one decision over a small vocabulary; logits ~ scale * N(0, 1),
    # pi_old = pi's logits + old_scale * N(0, 1) (a few inner steps behind).
    c.token = ml_collections.ConfigDict()
    c.token.vocab_size = 6
    c.token.scale = 1.0
    c.token.old_scale = 0.5

    # Sequence level: tabular autoregressive policy, all vocab_size**length sequences.
    c.sequence = ml_collections.ConfigDict()
    c.sequence.vocab_size = 3
    c.sequence.length = 3
    c.sequence.scale = 1.0
    c.sequence.old_scale = 0.5
    c.sequence.samplings = ("on", "off_is")

    # A row "descends" a target when its relative error is below this.
    c.match_tol = 1e-6

    scalars = {k: v for k, v in c.items() if isinstance(v, (bool, int, float, str))}
    c.update(parse_arg(arg, **scalars))
    return c
