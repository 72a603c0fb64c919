"""GRPO on a synthetic task, from a pretrained (or freshly pretrained) reference.

Run (the argument after ':' is a comma-separated list: `task=NAME`, `quick`, `full`; an
unknown argument is an error listing the valid ones):

  python experiments/train_grpo.py --config grpo_jax/configs/grpo.py:task=bandit \
      --config.loss.kl_estimator=k2 --workdir runs/bandit-k2
  python experiments/train_grpo.py --config grpo_jax/configs/grpo.py:task=arithmetic,quick --workdir runs/q

Any field can be overridden with `--config.FIELD=VALUE`; the config is locked, so a misspelt
field fails at parse time, and `build.validate_config` checks the values (estimator names,
sizes, ...) before anything compiles, naming the bad field.
"""

import ml_collections

from grpo_jax.configs import tasks as task_configs
from grpo_jax.run.config_utils import parse_arg


def _loss_config() -> ml_collections.ConfigDict:
    """The GRPO loss: KL choice and strength, clipping, aggregation, advantages."""
    return ml_collections.ConfigDict(
        dict(
            kl_estimator="k3",  # kl.ESTIMATORS or an exact regulariser (losses)
            kl_placement="loss",  # "loss" | "reward"
            kl_choice="",  # 'ESTIMATOR/PLACEMENT' overrides the two names above;
            # populations mixing choices share one program (switch)
            kl_reward_to_go=False,  # reward placement: per-token future-KL reward-to-go
            beta=0.04,
            entropy_coef=0.0,  # entropy bonus (no reference): the study's control
            eps_low=0.2,
            eps_high=0.2,
            aggregation="seq_mean_token_mean",
            advantage_estimator="grpo",  # "grpo" | "drgrpo" | "rloo"
            is_level="token",  # "token" | "sequence" (GSPO)
        )
    )


def _train_config() -> ml_collections.ConfigDict:
    """The host loop: steps, chunks, checkpoints, logging, seeds, non-finite handling."""
    return ml_collections.ConfigDict(
        dict(
            num_steps=200,
            chunk_steps=25,  # RL steps per jit call (one lax.scan); host logs between
            checkpoint_every_chunks=1,  # 0: no checkpoints (no resume)
            log_every_steps=1,  # metrics.jsonl rows: every k-th step (and the last)
            seed=0,
            num_seeds=1,  # > 1: a vmapped population over seeds seed, seed+1, ...
            on_nonfinite="stop",  # "stop" (keep last good checkpoint) | "skip" (count)
            max_skipped_frac=0.1,  # "skip": a member skipping more fails the run
            skip_zero_grad=False,  # no optimiser update when the gradient is exactly 0
            # Which transformer weights train (models/trainable.py): "all"; "last:K" (the
            # last K blocks; embedding, earlier blocks, final norm and head frozen); "lora"
            # (adapters W + (alpha/rank) A B on the `lora.targets` projections, B = 0 at
            # the start so the policy starts as the reference; base weights frozen). The
            # gradient and the Adam state cover only those leaves; the reference stays the
            # base model.
            trainable="all",
            # LoRA adapters, read only with trainable="lora": rank r >= 1, alpha > 0,
            # targets a comma-separated subset of q, k, v, o, gate, up, down.
            lora=ml_collections.ConfigDict(dict(rank=8, alpha=16.0, targets="q,v")),
            max_to_keep=2,  # checkpoints kept (0: all)
            tensorboard=True,
            progress=True,
        )
    )


def _reference_config() -> ml_collections.ConfigDict:
    # Reference policy: restored from `checkpoint` (an experiments/pretrain.py workdir) if set,
    # or loaded from `safetensors_dir` (a Hugging Face Llama checkpoint: config.json +
    # *.safetensors, models/hf_llama.py; its config.json then gives the model, not
    # `model` above, except model.dtype; its vocabulary must be the task's), otherwise
    # pretrained on the task's reference data at the start of the run (and saved under
    # <workdir>/reference so a re-run reuses it). `exact`: the transformer still starts
    # from that fit, but its KL is to the task's exact reference table (an enumerable task:
    # bandit, fork), so the regulariser is the data itself, not the fit.
    return ml_collections.ConfigDict(
        dict(
            checkpoint="",
            safetensors_dir="",
            steps=600,
            batch_size=256,
            lr=3e-3,
            chunk_steps=100,
            seed=1234,
            exact=False,
        )
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, task="bandit", quick=False, full=False)
    task_name = opts["task"]

    c = ml_collections.ConfigDict()
    c.task = task_configs.task_config(task_name)

    # The policy: "transformer" (the model below), or for the one-token bandit "tabular" (a
    # free softmax: the full simplex) or "gaussian" (one discretised Gaussian, 2 parameters),
    # whose reference is then the task's exact distribution (no pretraining).
    c.policy = "transformer"

    # Small Llama-style decoder (W2 scale by default, docs/design.md 'Benchmark workloads').
    c.model = ml_collections.ConfigDict(
        dict(num_layers=2, width=64, num_heads=2, mlp_width=256, dtype="float32")
    )

    c.reference = _reference_config()

    # Where the policy starts (run/build.py STARTS): "fit" = the reference itself (its
    # moment-matched fit for the Gaussian policy); the Gaussian policy also has
    # "rewarded_mode" and "middle" (a member key: one population may mix them).
    c.init = ml_collections.ConfigDict(dict(start="fit"))

    c.grpo = ml_collections.ConfigDict(
        dict(
            num_prompts=8,
            group_size=8,
            inner_steps=1,
            temperature=1.0,
            # one-token policies (tabular, gaussian): how the token is drawn (policies.DRAWS):
            # "gumbel" (exact to float32 in the tails) or the faster "inverse_cdf" (token
            # probabilities resolved only to ~1.2e-7: see sampling.inverse_cdf_categorical)
            one_token_draw="gumbel",
        )
    )

    c.loss = _loss_config()

    c.optim = ml_collections.ConfigDict(dict(lr=1e-3, grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8))

    # Target-KL controller (core/kl_control.py): with `measure` set, beta
    # starts at loss.beta and moves each step, log beta += rate * clip(KL / target - 1, -1, 1),
    # to hold the KL per token at `target`: "exact_rev" / "exact_fwd" (the exact KL of the
    # sampling policy on the batch) or "estimate" (the KL choice's own estimate). "" = off.
    # `target` and `rate` are member keys (a population may hold several targets). rate 0.01:
    # on the tabular bandit at lr 0.02, 0.1 overshoots into a limit cycle (tests/test_kl_control.py).
    c.kl_control = ml_collections.ConfigDict(dict(measure="", target=0.0, rate=0.01))

    c.train = _train_config()

    # Sharding as data: mesh axes and which arrays go where (sharding.py reads these).
    c.mesh = ml_collections.ConfigDict(
        dict(
            data=-1,  # devices on the data axis (-1: all)
            shard_params=False,  # also shard parameters along `data` (FSDP-style)
            multihost=False,  # call jax.distributed.initialize() first
            coordinator_address="",
            num_processes=1,
            process_id=0,
        )
    )

    if opts["quick"]:
        c.reference.steps = 200
        c.train.num_steps = 40
        c.train.chunk_steps = 10
    if opts["full"]:
        c.model.update(num_layers=4, width=256, num_heads=4, mlp_width=1024)
        c.grpo.num_prompts = 16
        c.reference.steps = 3000
        c.train.num_steps = 2000
        c.train.chunk_steps = 100
    return c
