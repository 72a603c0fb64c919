"""Config of the peer audit (experiments/peer_audit.py): what each framework's KL descends.

  python experiments/peer_audit.py --config grpo_jax/configs/peer_audit.py --workdir runs/peer_audit
  python experiments/peer_audit.py --config grpo_jax/configs/peer_audit.py:seed=3 --workdir runs/p3

The argument after ':' is a comma-separated list of `key=value` overrides of top-level
scalar fields; any field can also be set with `--config.FIELD=VALUE`.
"""

import ml_collections

from grpo_jax.configs import gradient_audit
from grpo_jax.run.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.x64 = True  # exact enumeration in float64

    # The gradient audit's problems (grpo_jax/configs/gradient_audit.py): one decision over
    # 5 tokens, and all 3**3 sequences of a tabular autoregressive policy, each with an
    # older policy (old_scale); the formulas' own samplings replace the audit's.
    base = gradient_audit.get_config()
    c.token = ml_collections.ConfigDict(dict(base.token, vocab_size=5))
    c.sequence = ml_collections.ConfigDict(
        {k: v for k, v in base.sequence.items() if k != "samplings"}
    )

    # Bias near the reference: logits = ref + eps * (policy - ref), sequence level, on policy.
    c.bias = ml_collections.ConfigDict()
    c.bias.eps = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)

    # Verdict tolerance (relative error / residual).
    c.match_tol = 1e-6

    scalars = {k: v for k, v in c.items() if isinstance(v, (bool, int, float, str))}
    c.update(parse_arg(arg, **scalars))
    return c
