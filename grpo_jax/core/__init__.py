"""The math: pure functions, jit/vmap/grad-safe; imports only jax, chex, optax, numpy and core.

checks      argument checks (shapes, names) and the masked mean
kl          KL estimators (registry), exact KL from logits, clamps
kl_choice   KLChoice: one vocabulary for (estimator, placement), "none" and the control arms
advantages  group-relative advantage estimators (registry)
losses      the GRPO policy loss, composed of small named parts
audit       exact-enumeration expected gradients
stats       exact KL, entropy, banned tokens, mode shares and coverage, pass@k
tables      autoregressive tables of enumerable sequences (joint <-> conditionals)
"""
