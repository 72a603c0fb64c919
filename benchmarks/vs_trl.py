"""grpo_jax against TRL's GRPOTrainer on the W1 / W2 workloads, side by side in one run.

    pip install -e '.[bench]'                      # torch, trl, transformers, datasets
    PYTHONPATH=. python benchmarks/vs_trl.py                        # W1 and W2
    PYTHONPATH=. python benchmarks/vs_trl.py --workloads=W1 --rounds=3 --steps=4
    PYTHONPATH=. python benchmarks/vs_trl.py --compute_dtype=bfloat16   # grpo_jax bf16 matmuls

Both sides run docs/design.md, 'Benchmark workloads' exactly: Llama-style decoder with the
workload's sizes, float32
weights, vocabulary 68 (64 ordinary tokens + 4 specials that are never sampled, so every
completion has full length), temperature 1, GRPO beta 0.04, k3 KL in the loss, eps 0.2,
one Adam step (lr 1e-4, no weight decay, no gradient clipping) per batch, reward = fraction
of completion tokens equal to id 7.

TRL side: `LlamaForCausalLM` (RMSNorm eps 1e-6, rope theta 10000, untied head, init std
0.02, no biases, float32), a local WordLevel tokenizer over the 68 ids, `GRPOTrainer` with
beta 0.04, epsilon 0.2, num_iterations 1, loss_type "grpo", scale_rewards "group",
optim adamw_torch (weight decay 0, constant lr 1e-4, max_grad_norm 0 = no clipping), no
gradient checkpointing, `suppress_tokens` = the 4 specials (the eos id is one of them, so no
completion stops early), per-device batch = prompts x G (one optimiser step per generation).
Each TRL step is timed by a `TrainerCallback` (on_step_begin -> on_step_end: generation,
reference forward, policy forward, backward, optimiser); the first `--warmup` steps of each
`trainer.train()` are dropped.

grpo_jax side: `grpo_jax.train.make_rl_chunk` with one RL step per jitted call (the same
unit TRL's step is), compile time (lower + compile) reported apart, `--warmup` calls
dropped.

The two sides alternate for `--rounds` rounds (grpo_jax `--steps` steps, then TRL `--steps`
steps, per round) so that a change in the machine's load hits both; the figure per side is
the median over all timed steps of all rounds, and the ratio is TRL s/step / grpo_jax s/step
(> 1: grpo_jax faster).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings

from absl import app, flags

import common  # noqa: E402  (applies grpo_jax.xla_setup's XLA flags before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import rl_step  # noqa: E402
from grpo_jax.models import model as model_lib  # noqa: E402
from grpo_jax.rl.train import make_rl_chunk  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["W1", "W2"], "Workloads to run (W1, W2).")
flags.DEFINE_integer("rounds", 2, "Alternating rounds (grpo_jax then TRL) per workload.")
flags.DEFINE_integer("steps", None, "Timed steps per side and round (default W1 3, W2 20).")
flags.DEFINE_integer("warmup", 1, "Untimed steps at the start of each side's round.")
flags.DEFINE_enum(
    "compute_dtype", "float32", model_lib.DTYPES, "grpo_jax compute dtype (TRL always float32)."
)
flags.DEFINE_bool("skip_trl", False, "Only grpo_jax (no torch needed).")
flags.DEFINE_bool("skip_jax", False, "Only TRL.")
flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads (default: torch's own).")
flags.DEFINE_enum(
    "trl_device",
    "auto",
    ["auto", "cpu"],
    "TRL's device: auto = the GPU when torch sees one (timers then synchronise CUDA), else CPU.",
)
flags.DEFINE_bool(
    "trl_phases",
    True,
    "Also time TRL's phases (generation, reference forward, "
    "policy forward, backward, optimiser) per step.",
)

VOCAB, SPECIALS, REWARD_TOKEN = rl_step.VOCAB, rl_step.SPECIALS, rl_step.REWARD_TOKEN
DEFAULT_STEPS = {"W1": 3, "W2": 20}


# ------------------------------------------------------------------------------------------
# grpo_jax
# ------------------------------------------------------------------------------------------


class JaxSide:
    """The workload as one compiled grpo_jax RL step, state carried between calls."""

    def __init__(self, name: str, compute_dtype: str):
        self.setup = rl_step.make_setup(name, compute_dtype=compute_dtype)
        self.state, self.hp = rl_step.init_population(self.setup, 0)
        self.run, self.compile_s = common.compile_seconds(
            make_rl_chunk(self.setup, 1), self.state, self.hp
        )

    def steps(self, n: int, warmup: int) -> list[float]:
        times = []
        for i in range(warmup + n):
            t0 = time.perf_counter()
            self.state, metrics = self.run(self.state, self.hp)
            jax.block_until_ready((self.state, metrics))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        self.last_reward = float(metrics["reward_mean"][-1])
        return times


# ------------------------------------------------------------------------------------------
# TRL
# ------------------------------------------------------------------------------------------


def trl_tokenizer():
    """A WordLevel tokenizer over the 68 ids: "t0".."t63" ordinary, 4 specials at 64..67."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {f"t{i}": i for i in range(SPECIALS[0])}
    vocab.update({s: SPECIALS[i] for i, s in enumerate(specials)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def trl_model(w: dict):
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=w["width"],
        intermediate_size=w["mlp_width"],
        num_hidden_layers=w["num_layers"],
        num_attention_heads=w["num_heads"],
        num_key_value_heads=w["num_heads"],
        max_position_embeddings=w["prompt_len"] + w["completion_len"],
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        pad_token_id=SPECIALS[0],
        eos_token_id=SPECIALS[1],
        bos_token_id=SPECIALS[2],
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.float32)


def token7_reward(completion_ids, **kwargs):
    """Fraction of completion tokens equal to id 7, one float per completion."""
    del kwargs
    return [sum(int(t) == REWARD_TOKEN for t in ids) / max(len(ids), 1) for ids in completion_ids]


def trl_clock() -> float:
    """`time.perf_counter()` after the GPU's queued work is done (when torch uses CUDA), so
    TRL's step and phase times count the GPU work, not its launch."""
    import torch  # noqa: PLC0415

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def trl_on_cpu() -> bool:
    import torch  # noqa: PLC0415

    return FLAGS.trl_device == "cpu" or not torch.cuda.is_available()


class TRLSide:
    """TRL's GRPOTrainer on the workload; `steps(n, warmup)` runs one `trainer.train()`."""

    def __init__(self, name: str):
        import torch  # noqa: PLC0415

        if FLAGS.torch_threads:
            torch.set_num_threads(FLAGS.torch_threads)
        self.w = rl_step.WORKLOADS[name]
        self.model = trl_model(self.w)
        self.tokenizer = trl_tokenizer()
        self.outdir = tempfile.mkdtemp(prefix="vs_trl_")
        # TRL builds the reference model from the policy's `name_or_path`: save the initial
        # weights there (the reference stays the initial model across rounds).
        ref_dir = os.path.join(self.outdir, "reference")
        self.model.save_pretrained(ref_dir)
        self.tokenizer.save_pretrained(ref_dir)
        self.model.config._name_or_path = ref_dir
        self.seed = 0
        self.phases = []

    def _dataset(self, num_steps: int):
        import datasets  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415

        rng = np.random.default_rng(self.seed)
        n = self.w["num_prompts"] * num_steps
        ids = rng.integers(0, SPECIALS[0], size=(n, self.w["prompt_len"]))
        return datasets.Dataset.from_dict(
            {"prompt": [" ".join(f"t{i}" for i in row) for row in ids]}
        )

    def steps(self, n: int, warmup: int) -> list[float]:
        import transformers  # noqa: PLC0415
        from trl import GRPOConfig, GRPOTrainer  # noqa: PLC0415

        times, starts, phases, opt_t0 = [], [], [], []

        class StepTimer(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                phases.append(dict.fromkeys(TRL_PHASES, 0.0))
                starts.append(trl_clock())

            def on_pre_optimizer_step(self, args, state, control, **kw):
                opt_t0.append(trl_clock())

            def on_optimizer_step(self, args, state, control, **kw):
                phases[-1]["optimiser"] += trl_clock() - opt_t0[-1]

            def on_step_end(self, args, state, control, **kw):
                times.append(trl_clock() - starts[-1])

        w, total = self.w, warmup + n
        self.seed += 1
        args = GRPOConfig(
            output_dir=self.outdir,
            report_to="none",
            save_strategy="no",
            logging_steps=10**6,
            disable_tqdm=True,
            use_cpu=trl_on_cpu(),
            bf16=False,
            fp16=False,
            seed=self.seed,
            max_steps=total,
            per_device_train_batch_size=w["num_prompts"] * w["group_size"],
            gradient_accumulation_steps=1,
            num_generations=w["group_size"],
            max_completion_length=w["completion_len"],
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            generation_kwargs={"suppress_tokens": list(SPECIALS)},
            beta=0.04,
            epsilon=0.2,
            num_iterations=1,
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            warmup_steps=0,
            optim="adamw_torch",
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            max_grad_norm=0.0,
            gradient_checkpointing=False,
            dataloader_num_workers=0,
            log_completions=False,
        )
        trainer = GRPOTrainer(
            model=self.model,
            reward_funcs=token7_reward,
            args=args,
            train_dataset=self._dataset(total),
            processing_class=self.tokenizer,
            callbacks=[StepTimer()],
        )
        if FLAGS.trl_phases:
            _instrument(trainer, phases)
        trainer.train()
        if FLAGS.trl_phases:
            self.phases += phases[warmup:]
        self.model = trainer.model  # carry the trained weights into the next round
        if len(times) != total:
            raise RuntimeError(f"TRL ran {len(times)} steps, expected {total}.")
        return times[warmup:]


TRL_PHASES = ("generation", "reference forward", "policy forward", "backward", "optimiser")


def _instrument(trainer, phases: list) -> None:
    """Wrap the trainer's generation, log-prob forwards and backward with timers that add to
    `phases[-1]` (one dict per step). A log-prob forward inside
    `_generate_and_score_completions` is the reference's (with num_iterations 1 TRL computes
    no old log-probs); one outside it is the policy's, in the loss."""
    state = {"scoring": False}

    def timed(fn, phase_of):
        def wrapper(*a, **kw):
            t0 = trl_clock()
            try:
                return fn(*a, **kw)
            finally:
                name = phase_of()
                if name:
                    phases[-1][name] += trl_clock() - t0

        return wrapper

    score = trainer._generate_and_score_completions

    def scoring(*a, **kw):
        state["scoring"] = True
        try:
            return score(*a, **kw)
        finally:
            state["scoring"] = False

    trainer._generate_and_score_completions = scoring
    trainer._generate_single_turn = timed(trainer._generate_single_turn, lambda: "generation")
    trainer._get_per_token_logps_and_entropies = timed(
        trainer._get_per_token_logps_and_entropies,
        lambda: "reference forward" if state["scoring"] else "policy forward",
    )
    trainer.accelerator.backward = timed(trainer.accelerator.backward, lambda: "backward")


# ------------------------------------------------------------------------------------------


def run_workload(name: str) -> dict:
    steps = FLAGS.steps or DEFAULT_STEPS[name]
    w = rl_step.WORKLOADS[name]
    print(
        f"\n== {name}: {w['num_layers']} layers, width {w['width']}, {w['num_heads']} heads, "
        f"MLP {w['mlp_width']}, {w['num_prompts']} x {w['group_size']}, prompt "
        f"{w['prompt_len']}, {w['completion_len']} new tokens; {FLAGS.rounds} rounds x "
        f"{steps} timed steps (+{FLAGS.warmup} warm-up) per side"
    )
    jax_side = None if FLAGS.skip_jax else JaxSide(name, FLAGS.compute_dtype)
    trl_side = None if FLAGS.skip_trl else TRLSide(name)
    if jax_side:
        print(
            f"  grpo_jax ({FLAGS.compute_dtype}): compile {jax_side.compile_s:.1f} s, "
            f"params {model_lib.num_params(jax_side.state.params) / 1e6:.2f} M"
        )
    jt, tt = [], []
    for r in range(FLAGS.rounds):
        if jax_side:
            t = jax_side.steps(steps, FLAGS.warmup)
            jt += t
            print(
                f"  round {r} grpo_jax s/step: {common.fmt_times(t, 4)}  [{common.load_average()}]"
            )
        if trl_side:
            t = trl_side.steps(steps, FLAGS.warmup)
            tt += t
            print(
                f"  round {r} TRL      s/step: {common.fmt_times(t, 4)}  [{common.load_average()}]"
            )
    out = dict(workload=name)
    if jt:
        out["jax_s"] = statistics.median(jt)
        print(
            f"  grpo_jax: {out['jax_s']:.4f} s/step (median of {len(jt)}; min {min(jt):.4f})"
            f", compile {jax_side.compile_s:.1f} s, last reward {jax_side.last_reward:.3f}"
        )
    if tt:
        out["trl_s"] = statistics.median(tt)
        where = "cpu" if trl_on_cpu() else "cuda"
        print(
            f"  TRL:      {out['trl_s']:.4f} s/step (median of {len(tt)}; min {min(tt):.4f})"
            f", on {where}"
        )
        if trl_side.phases:
            med = {k: statistics.median(p[k] for p in trl_side.phases) for k in TRL_PHASES}
            out["trl_phases"] = med
            print(
                "  TRL phases (median s/step): "
                + ", ".join(f"{k} {v:.4f}" for k, v in med.items())
                + f"; rest {out['trl_s'] - sum(med.values()):.4f}"
            )
    if jt and tt:
        out["ratio"] = out["trl_s"] / out["jax_s"]
        print(
            f"  ratio TRL / grpo_jax = {out['ratio']:.2f}x "
            f"({'grpo_jax' if out['ratio'] > 1 else 'TRL'} faster)"
        )
    return out


def main(argv):
    del argv
    warnings.filterwarnings("ignore", message=".*donated buffers.*")
    extra = {}
    if not FLAGS.skip_trl:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
        import trl  # noqa: PLC0415

        extra = dict(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            transformers=transformers.__version__,
            trl=trl.__version__,
        )
    print("machine:", common.describe_machine(extra))
    results = [run_workload(name) for name in FLAGS.workloads]
    print("\nsummary (s/step, median):")
    for r in results:
        print(
            f"  {r['workload']}: grpo_jax {r.get('jax_s', float('nan')):.4f}  "
            f"TRL {r.get('trl_s', float('nan')):.4f}  ratio {r.get('ratio', float('nan')):.2f}x"
        )
    print("end:", common.load_average())


if __name__ == "__main__":
    app.run(main)
