"""grpo_jax against TRL's GRPOTrainer on the W1 / W2 / W3 workloads, side by side in one run.

    pip install -e '.[bench]'                  # torch, trl, transformers, datasets, gguf
    PYTHONPATH=. python benchmarks/vs_trl.py                        # W1 and W2
    PYTHONPATH=. python benchmarks/vs_trl.py --workloads=W1 --rounds=3 --steps=4
    PYTHONPATH=. python benchmarks/vs_trl.py --workloads=W3         # SmolLM2-135M-Instruct
    PYTHONPATH=. python benchmarks/vs_trl.py --compute_dtype=bfloat16   # grpo_jax bf16 matmuls

W1 and W2 run docs/design.md, 'Benchmark workloads' exactly: Llama-style decoder with the
workload's sizes, float32 weights, vocabulary 68 (64 ordinary tokens + 4 specials that are
never sampled, so every completion has full length), temperature 1, GRPO beta 0.04, k3 KL in
the loss, eps 0.2, one Adam step (lr 1e-4, no weight decay, no gradient clipping) per batch,
reward = fraction of completion tokens equal to id 7. TRL side: `LlamaForCausalLM` (RMSNorm
eps 1e-6, rope theta 10000, untied head, init std 0.02, no biases, float32) and a local
WordLevel tokenizer over the 68 ids.

W3 (benchmarks/w3.py): one GRPO step on SmolLM2-135M-Instruct, the GGUF file
`grpo_jax.models.gguf.fetch_smollm2` caches (or `--w3_gguf`), dequantised to float32 on both
sides: grpo_jax loads it with `gguf.load`, TRL with `AutoModelForCausalLM.from_pretrained(dir,
gguf_file=name)` and the tokenizer likewise (the two models' logits on a prompt are compared
before the rounds). 8 fixed prompts x G = 8, each prompt 48 tokens (a user turn of the chat
template; TRL renders the same conversations with its tokenizer's template, the ids checked
equal), 16 new tokens, lr 1e-6, reward = fraction of completion tokens that are a digit, the
tokenizer's control tokens never sampled; the rest as W1.

TRL, every workload: `GRPOTrainer` with beta 0.04, epsilon 0.2, num_iterations 1, loss_type
"grpo", scale_rewards "group", optim adamw_torch (weight decay 0, constant lr, max_grad_norm
0 = no clipping), no gradient checkpointing, `suppress_tokens` = the specials (the eos id is
one of them, so no completion stops early; the prompt and completion lengths TRL generates
with are recorded and checked), per-device batch = prompts x G (one optimiser step per
generation). Each TRL step is timed by a `TrainerCallback` (on_step_begin -> on_step_end:
generation, reference forward, policy forward, backward, optimiser); the first `--warmup`
steps of each `trainer.train()` are dropped.

grpo_jax side: `grpo_jax.train.make_rl_chunk` with one RL step per jitted call (the same
unit TRL's step is), compile time (lower + compile) reported apart, `--warmup` calls
dropped.

The two sides alternate for `--rounds` rounds (grpo_jax `--steps` steps, then TRL `--steps`
steps, per round) so that a change in the machine's load hits both; the figure per side is
the median over all timed steps of all rounds, and the ratio is TRL s/step / grpo_jax s/step
(> 1: grpo_jax faster).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable

from absl import app, flags

import common  # noqa: E402  (applies grpo_jax.xla_setup's XLA flags before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import rl_step  # noqa: E402
import w3  # noqa: E402
from grpo_jax.models import gguf, model as model_lib, tokenizer as tokenizer_lib  # noqa: E402
from grpo_jax.rl.train import make_rl_chunk  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["W1", "W2"], "Workloads to run (W1, W2, W3).")
flags.DEFINE_integer("rounds", 2, "Alternating rounds (grpo_jax then TRL) per workload.")
flags.DEFINE_integer("steps", None, "Timed steps per side and round (default W1 3, W2 20, W3 2).")
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
flags.DEFINE_string(
    "w3_gguf", "", "W3's GGUF file (default: SmolLM2-135M-Instruct, gguf.fetch_smollm2's cache)."
)

VOCAB, SPECIALS, REWARD_TOKEN = rl_step.VOCAB, rl_step.SPECIALS, rl_step.REWARD_TOKEN
DEFAULT_STEPS = {"W1": 3, "W2": 20, "W3": 2}


def w3_path() -> str:
    return FLAGS.w3_gguf or gguf.fetch_smollm2()


def describe(name: str) -> str:
    """One line: the workload's model and sizes."""
    if name == "W3":
        return (
            f"{os.path.basename(w3_path())} (default SmolLM2-135M-Instruct) as float32, "
            f"{w3.NUM_PROMPTS} x {w3.GROUP_SIZE}, prompt {w3.PROMPT_LEN} (chat template), "
            f"{w3.COMPLETION_LEN} new tokens, lr {w3.LR:g}"
        )
    w = rl_step.WORKLOADS[name]
    return (
        f"{w['num_layers']} layers, width {w['width']}, {w['num_heads']} heads, "
        f"MLP {w['mlp_width']}, {w['num_prompts']} x {w['group_size']}, prompt "
        f"{w['prompt_len']}, {w['completion_len']} new tokens"
    )


# ------------------------------------------------------------------------------------------
# grpo_jax
# ------------------------------------------------------------------------------------------


class JaxSide:
    """The workload as one compiled grpo_jax RL step, state carried between calls."""

    def __init__(self, setup, state, hp):
        self.setup, self.state, self.hp = setup, state, hp
        self.run, self.compile_s = common.compile_seconds(make_rl_chunk(setup, 1), state, hp)

    def steps(self, n: int, warmup: int) -> list[float]:
        times = []
        for i in range(warmup + n):
            t0 = time.perf_counter()
            self.state, metrics = self.run(self.state, self.hp)
            jax.block_until_ready((self.state, metrics))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        self.last_reward = float(metrics["reward_mean"][-1])
        self.last_loss = float(metrics["loss"][-1])
        return times


def jax_side(name: str, task: w3.DigitTask | None) -> JaxSide:
    if name == "W3":
        return JaxSide(*w3.make(w3_path(), task, compute_dtype=FLAGS.compute_dtype))
    setup = rl_step.make_setup(name, compute_dtype=FLAGS.compute_dtype)
    return JaxSide(setup, *rl_step.init_population(setup, 0))


# ------------------------------------------------------------------------------------------
# TRL
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TRLWorkload:
    """A workload as `TRLSide` runs it: the policy (float32, its initial weights), the
    processing class, the dataset's prompt column for `(num_steps, seed)`, the reward function
    (of `completion_ids`), the suppressed tokens and the sizes."""

    model: Any
    tokenizer: Any
    prompts: Callable[[int, int], list]
    reward: Callable
    suppress: tuple
    num_prompts: int
    group_size: int
    prompt_len: int
    completion_len: int
    lr: float


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


def token_fraction_reward(ids, name: str) -> Callable:
    """A TRL reward function: the fraction of each completion's tokens that are in `ids`."""
    ids = frozenset(int(i) for i in ids)

    def reward(completion_ids, **kwargs):
        del kwargs
        return [sum(int(t) in ids for t in c) / max(len(c), 1) for c in completion_ids]

    reward.__name__ = name
    return reward


def trl_w12(name: str) -> TRLWorkload:
    """W1 / W2: a random-init Llama of the workload's sizes, random prompts for every step."""
    w = rl_step.WORKLOADS[name]

    def prompts(num_steps: int, seed: int) -> list:
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, SPECIALS[0], size=(w["num_prompts"] * num_steps, w["prompt_len"]))
        return [" ".join(f"t{i}" for i in row) for row in ids]

    return TRLWorkload(
        model=trl_model(w),
        tokenizer=trl_tokenizer(),
        prompts=prompts,
        reward=token_fraction_reward([REWARD_TOKEN], "token7_reward"),
        suppress=tuple(SPECIALS),
        num_prompts=w["num_prompts"],
        group_size=w["group_size"],
        prompt_len=w["prompt_len"],
        completion_len=w["completion_len"],
        lr=1e-4,
    )


def trl_w3(path: str, task: w3.DigitTask) -> TRLWorkload:
    """W3: the GGUF file through transformers (float32); the task's 8 user texts as
    conversational prompts, which TRL renders with the tokenizer's chat template (checked
    here to give the task's ids); the same reward and suppressed tokens."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    folder, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # Its weights in a plain float32 model: transformers marks a model loaded from GGUF as
    # quantized, and save_pretrained (TRLSide saves the reference) refuses such a model.
    if hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    conversations = [[{"role": "user", "content": t}] for t in task.texts]
    # The call GRPOTrainer._tokenize_prompts makes on conversational prompts.
    ids = tok.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    if [list(i) for i in ids] != [list(p) for p in task.prompts]:
        raise RuntimeError("W3: TRL's tokenizer renders the prompts to other ids than grpo_jax's")
    return TRLWorkload(
        model=model,
        tokenizer=tok,
        # The 8 prompts, each step (TRL's sampler takes num_prompts distinct rows per step).
        prompts=lambda num_steps, seed: conversations,
        reward=token_fraction_reward(task.digit_ids, "digit_reward"),
        suppress=tuple(task.special_ids),
        num_prompts=w3.NUM_PROMPTS,
        group_size=w3.GROUP_SIZE,
        prompt_len=task.prompt_len,
        completion_len=task.completion_len,
        lr=w3.LR,
    )


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


def trl_args(wl: TRLWorkload, outdir: str, seed: int, total: int):
    """The GRPOConfig of every workload (module docstring)."""
    from trl import GRPOConfig  # noqa: PLC0415

    return GRPOConfig(
        output_dir=outdir,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=trl_on_cpu(),
        bf16=False,
        fp16=False,
        seed=seed,
        max_steps=total,
        per_device_train_batch_size=wl.num_prompts * wl.group_size,
        gradient_accumulation_steps=1,
        num_generations=wl.group_size,
        max_completion_length=wl.completion_len,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        generation_kwargs={"suppress_tokens": list(wl.suppress)},
        beta=0.04,
        epsilon=0.2,
        num_iterations=1,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=wl.lr,
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


def step_timer(times: list, phases: list):
    """A `TrainerCallback` appending each step's seconds to `times`, a dict of phase seconds
    to `phases` (filled by `_instrument`) and timing the optimiser step."""
    import transformers  # noqa: PLC0415

    starts, opt_t0 = [], []

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

    return StepTimer()


class TRLSide:
    """TRL's GRPOTrainer on a `TRLWorkload`; `steps(n, warmup)` runs one `trainer.train()`."""

    def __init__(self, wl: TRLWorkload):
        import torch  # noqa: PLC0415

        if FLAGS.torch_threads:
            torch.set_num_threads(FLAGS.torch_threads)
        self.wl, self.model = wl, wl.model
        self.outdir = tempfile.mkdtemp(prefix="vs_trl_")
        # TRL builds the reference model from the policy's `name_or_path`: save the initial
        # weights there (the reference stays the initial model across rounds).
        ref_dir = os.path.join(self.outdir, "reference")
        self.model.save_pretrained(ref_dir)
        wl.tokenizer.save_pretrained(ref_dir)
        self.model.config._name_or_path = ref_dir
        self.seed = 0
        self.phases = []
        self.lengths = {"prompt": set(), "completion": set()}  # as TRL generated

    def steps(self, n: int, warmup: int) -> list[float]:
        import datasets  # noqa: PLC0415
        from trl import GRPOTrainer  # noqa: PLC0415

        wl, total, times, phases = self.wl, warmup + n, [], []
        self.seed += 1
        trainer = GRPOTrainer(
            model=self.model,
            reward_funcs=wl.reward,
            args=trl_args(wl, self.outdir, self.seed, total),
            train_dataset=datasets.Dataset.from_dict({"prompt": wl.prompts(total, self.seed)}),
            processing_class=wl.tokenizer,
            callbacks=[step_timer(times, phases)],
        )
        if FLAGS.trl_phases:
            _instrument(trainer, phases)
        _record_lengths(trainer, self.lengths)
        trainer.train()
        if FLAGS.trl_phases:
            self.phases += phases[warmup:]
        self.model = trainer.model  # carry the trained weights into the next round
        if len(times) != total:
            raise RuntimeError(f"TRL ran {len(times)} steps, expected {total}.")
        expected = {"prompt": {wl.prompt_len}, "completion": {wl.completion_len}}
        if self.lengths != expected:
            raise RuntimeError(f"TRL generated with token lengths {self.lengths}, not {expected}")
        return times[warmup:]


def _record_lengths(trainer, lengths: dict) -> None:
    """Record the prompt and completion token lengths of each of the trainer's generations."""
    generate = trainer._generate_single_turn

    def wrapper(prompt_ids, *a, **kw):
        out = generate(prompt_ids, *a, **kw)
        lengths["prompt"].update(len(p) for p in prompt_ids)
        lengths["completion"].update(len(c) for c in out[0])
        return out

    trainer._generate_single_turn = wrapper


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


def w3_logit_difference(side: JaxSide, trl: TRLSide, task: w3.DigitTask) -> float:
    """max |logit difference| between the two sides' initial models on the first prompt
    (before any step: the grpo_jax step donates its state)."""
    import torch  # noqa: PLC0415

    ids = task.prompts[0]
    ours = model_lib.forward(side.setup.model, side.state.ref_params, jnp.asarray([ids]))
    with torch.no_grad():
        theirs = trl.model(torch.tensor([ids], device=trl.model.device)).logits
    return float(np.max(np.abs(np.asarray(ours, np.float32) - theirs.float().cpu().numpy())))


def w3_checks(task: w3.DigitTask, jax_s: JaxSide | None, trl_s: TRLSide | None) -> None:
    print(
        f"  W3 prompts: {len(task.prompts)} x {task.prompt_len} tokens (grpo_jax tokenizer"
        + (", the same ids from TRL's tokenizer)" if trl_s else ")")
        + f"; first: {task.texts[0]!r}"
    )
    if jax_s and trl_s:
        diff = w3_logit_difference(jax_s, trl_s, task)
        print(f"  W3 same model: max |logit difference| on the first prompt {diff:.2e}")
        if FLAGS.compute_dtype == "float32" and diff > 1e-2:
            raise RuntimeError(f"W3: the two sides' models differ (max |logit diff| {diff})")


def run_workload(name: str) -> dict:
    steps = FLAGS.steps or DEFAULT_STEPS[name]
    print(
        f"\n== {name}: {describe(name)}; {FLAGS.rounds} rounds x {steps} timed steps "
        f"(+{FLAGS.warmup} warm-up) per side"
    )
    task = w3.digit_task(tokenizer_lib.from_gguf(w3_path())) if name == "W3" else None
    jax_s = None if FLAGS.skip_jax else jax_side(name, task)
    trl_s = None
    if not FLAGS.skip_trl:
        trl_s = TRLSide(trl_w3(w3_path(), task) if name == "W3" else trl_w12(name))
    if jax_s:
        print(
            f"  grpo_jax ({FLAGS.compute_dtype}): compile {jax_s.compile_s:.1f} s, "
            f"params {model_lib.num_params(jax_s.state.params) / 1e6:.2f} M"
        )
    if task:
        w3_checks(task, jax_s, trl_s)
    jt, tt = [], []
    for r in range(FLAGS.rounds):
        for side, label, acc in ((jax_s, "grpo_jax", jt), (trl_s, "TRL     ", tt)):
            if side:
                t = side.steps(steps, FLAGS.warmup)
                acc += t
                print(
                    f"  round {r} {label} s/step: {common.fmt_times(t, 4)}  "
                    f"[{common.load_average()}]"
                )
    return report(name, jax_s, trl_s, jt, tt)


def report(name: str, jax_s, trl_s, jt: list, tt: list) -> dict:
    """Print the workload's medians, TRL's phases and the ratio; return them."""
    out = dict(workload=name)
    if jt:
        out["jax_s"], out["compile_s"] = statistics.median(jt), jax_s.compile_s
        print(
            f"  grpo_jax: {out['jax_s']:.4f} s/step (median of {len(jt)}; min {min(jt):.4f})"
            f", compile {jax_s.compile_s:.1f} s, last reward {jax_s.last_reward:.3f}"
            f", last loss {jax_s.last_loss:.4g}"
        )
    if tt:
        out["trl_s"] = statistics.median(tt)
        where = "cpu" if trl_on_cpu() else "cuda"
        print(
            f"  TRL:      {out['trl_s']:.4f} s/step (median of {len(tt)}; min {min(tt):.4f})"
            f", on {where}; generated with prompt {sorted(trl_s.lengths['prompt'])} and "
            f"completion {sorted(trl_s.lengths['completion'])} tokens"
        )
        if trl_s.phases:
            med = {k: statistics.median(p[k] for p in trl_s.phases) for k in TRL_PHASES}
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
    unknown = [w for w in FLAGS.workloads if w not in DEFAULT_STEPS]
    if unknown:
        raise app.UsageError(f"unknown workloads {unknown}; valid: {', '.join(DEFAULT_STEPS)}")
    extra = {}
    if not FLAGS.skip_trl:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
        import trl  # noqa: PLC0415

        transformers.logging.disable_progress_bar()  # loading bars, W3's GGUF conversion
        extra = dict(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            transformers=transformers.__version__,
            trl=trl.__version__,
        )
    print("machine:", common.describe_machine(extra))
    results = [run_workload(name) for name in FLAGS.workloads]
    print("\nsummary (s/step, median; grpo_jax compile = lower + compile):")
    nan = float("nan")
    for r in results:
        print(
            f"  {r['workload']}: grpo_jax {r.get('jax_s', nan):.4f} (compile "
            f"{r.get('compile_s', nan):.1f} s)  TRL {r.get('trl_s', nan):.4f}  "
            f"ratio {r.get('ratio', nan):.2f}x"
        )
    print("end:", common.load_average())


if __name__ == "__main__":
    app.run(main)
