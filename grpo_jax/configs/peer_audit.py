"""Config of the peer audit (experiments/peer_audit.py): what each framework's KL descends.

  python experiments/peer_audit.py --config grpo_jax/configs/peer_audit.py --workdir runs/peer_audit
  python experiments/peer_audit.py --config grpo_jax/configs/peer_audit.py:seed=3 --workdir runs/p3

The argument after ':' is a comma-separated list of `key=value` overrides of top-level
scalar fields; any field can also be set with `--config.FIELD=VALUE`.
"""

import ml_collections

from grpo_jax.run.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.x64 = True  # exact enumeration in float64

    # Token level: one decision; logits ~ scale * N(0, 1), the older policy = logits +
    # old_scale * N(0, 1).
    c.token = ml_collections.ConfigDict()
    c.token.vocab_size = 5
    c.token.scale = 1.0
    c.token.old_scale = 0.5

    # Sequence level: tabular autoregressive policy, all vocab_size**length sequences.
    c.sequence = ml_collections.ConfigDict()
    c.sequence.vocab_size = 3
    c.sequence.length = 3
    c.sequence.scale = 1.0
    c.sequence.old_scale = 0.5

    # Bias near the reference: logits = ref + eps * (policy - ref), sequence level, on policy.
    c.bias = ml_collections.ConfigDict()
    c.bias.eps = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)

    # Verdict tolerance (relative error / residual).
    c.match_tol = 1e-6

    scalars = {k: v for k, v in c.items() if isinstance(v, (bool, int, float, str))}
    c.update(parse_arg(arg, **scalars))
    return c
