"""grpo_jax: GRPO and its KL penalty in JAX.

Modules (see ../shared/DESIGN.md):
  kl          KL estimators, exact KL from logits, clamps
  advantages  group-relative advantages
  losses      the GRPO policy loss
  audit       exact-enumeration expected gradients
  model       small decoder-only transformer (flax.nnx)
  sampling    jitted KV-cache sampling
  tasks       synthetic reward tasks with a modality dial
  metrics     exact KL, entropy, mode coverage, pass@k
  train       train state and pure train steps
"""

__version__ = "0.1.0"
