"""grpo_jax: GRPO and its KL penalty in JAX.

Modules (docs/design.md describes the math, the layout and the data flow):

  The math (pure functions, jit/vmap/grad-safe)
    kl            KL estimators (registry), exact KL from logits, clamps
    kl_choice     KLChoice: one vocabulary for (estimator, placement) and "none"
    advantages    group-relative advantage estimators (registry)
    losses        the GRPO policy loss, composed of small named parts
    audit         exact-enumeration expected gradients
    metrics       exact KL, entropy, mode coverage, pass@k
  Models and data
    model         small decoder-only transformer (flax.nnx)
    sampling      jitted KV-cache sampling
    tasks         synthetic reward tasks with a modality dial
  Training
    pretrain      reference pretraining; save / restore a reference
    reference_fit the exact fit report of a pretrained reference
    train         the GRPO step: rollout, loss function, inner updates, metrics
    evaluate      final evaluation (exact by enumeration where possible)
  Orchestration (host side; I/O only here)
    runner        config -> objects -> chunked jitted training, checkpoints, metrics
    sweep         grid expansion, grouping into populations, cell cache
    study         the study: exact one-token outcomes, records, group runner
    report        statistics, verdicts, figures and markdown of the study
    rundir        run-directory config check, lock, log recovery
    checkpoint    orbax save / restore;  writers: JSONL, TensorBoard, progress
    config_utils  strict config arguments, dotted keys;  jsonio: JSON at the edges
    sharding      mesh and sharding rules; multi-host start-up
"""

__version__ = "0.1.0"
