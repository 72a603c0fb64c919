"""grpo_jax: GRPO and its KL penalty in JAX.

The folders are layers; imports go one way (tests/test_layers.py), and importing any of them
changes nothing process-wide (entry points apply process settings with `run.launch`).
docs/design.md describes the math, the layout and the data flow.

  core/     the math, pure and jit/vmap/grad-safe: kl (estimators, exact KL), kl_choice,
            advantages, losses, audit (exact expected gradients), stats, checks, tables
  models/   model (flax.nnx decoder), sampling (the one jitted KV-cache sampler), policies
            (tabular / Gaussian, a tabular per prefix for sequences), gguf and tokenizer (SmolLM2 from a GGUF file),
            hf_llama (Hugging Face Llama safetensors checkpoints), llama_tensors (the
            tensor mapping both loaders share)
  tasks/    synthetic reward tasks with a modality dial (bandit, fork, ...); sequence_optima
            (the fork's closed forms); enumeration (exact quantities of a model over a task's
            completions)
  rl/       train (the GRPO step and chunked scans), pretrain, reference_fit, evaluate (the
            one final evaluator)
  run/      the host side, the only layer with I/O: runner (populations, the chunk loop),
            reference, sweep, rundir, checkpoint, writers, config_utils, jsonio, sharding,
            launch and xla_setup (process settings)
  study/    pipeline (the study end to end), groups (its group runner and exact
            records), gaussian_kl (the Gaussian toy), gaussian_optima (its class's exact
            maxima), token_modality (the premise on
            SmolLM2), grpo_lm (GRPO on SmolLM2), report/ (statistics, verdicts, figures,
            markdown)
  configs/  ml_collections configs, run by path (--config grpo_jax/configs/NAME.py)
"""

__version__ = "0.1.0"
