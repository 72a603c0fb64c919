"""W3, the real-model workload of benchmarks/vs_trl.py: its prompts, reward and grpo_jax step.

    tok = tokenizer.from_gguf(path)
    task = w3.digit_task(tok)                      # 8 fixed prompts of 48 tokens each
    setup, state, hp = w3.make(path, task)         # one GRPO step: make_rl_chunk(setup, 1)

One GRPO step on SmolLM2-135M-Instruct (the GGUF file `grpo_jax.models.gguf.fetch_smollm2`
caches, dequantised to float32): 8 prompts x G = 8, 16 new tokens, temperature 1, beta 0.04,
k3 in the loss, eps 0.2, one Adam step (lr 1e-6, no weight decay, no gradient clipping), the
tokenizer's control tokens never sampled (every completion has full length). Reward: the
fraction of completion tokens that are a digit ("0".."9", one token each in SmolLM2).

The prompts: 8 fixed instructions, each followed by a space and a prefix of a fixed digit
string (the digits of 3 ** (200 + 7 i) for instruction i), as the user turn of the chat
template with the assistant's turn opened. The digit prefix is the shortest that makes the
rendered prompt exactly `prompt_len` tokens (each digit is one token under the `smollm`
pre-tokenizer), so every prompt has the same length and no padding is needed on either side.

Imports only grpo_jax (no torch, no `common`): tests/test_vs_trl_w3.py runs the step on a
tiny GGUF file.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core import losses
from grpo_jax.models import gguf
from grpo_jax.rl.train import Hparams, RLSetup, init_rl_state

NUM_PROMPTS, GROUP_SIZE, PROMPT_LEN, COMPLETION_LEN = 8, 8, 48, 16
LR, BETA, EPS = 1e-6, 0.04, 0.2

INSTRUCTIONS = (
    "Continue these digits:",
    "What digits come next?",
    "Repeat these digits:",
    "Add one to each digit:",
    "Sort these digits:",
    "Reverse these digits:",
    "Count these digits:",
    "Write the next digits:",
)


def digits_of(i: int) -> str:
    """The fixed digit string of instruction `i` (96 digits or more)."""
    return str(3 ** (200 + 7 * i))


@dataclasses.dataclass(frozen=True)
class DigitTask:
    """The W3 task (the interface `train.RLSetup` uses, as in `grpo_jax/tasks/number_text.py`).

    Attributes:
      prompts: token ids of each prompt, all of one length P.
      texts: each prompt's user text (the TRL side's dataset).
      digit_ids: the tokens of the digits 0..9.
      vocab_size: the model's vocabulary.
      special_ids: tokens never sampled (the tokenizer's control tokens).
      completion_len: T.
    """

    prompts: tuple
    texts: tuple
    digit_ids: tuple
    vocab_size: int
    special_ids: tuple = ()
    completion_len: int = COMPLETION_LEN
    name: str = "w3_digits"
    num_modes: int = 1

    def __post_init__(self):
        if len({len(p) for p in self.prompts}) != 1:
            raise ValueError(f"{self.name}: prompts must share one token length")

    @property
    def prompt_len(self) -> int:
        return len(self.prompts[0])

    def all_prompts(self) -> jax.Array:
        return jnp.asarray(np.asarray(self.prompts, np.int32))

    def sample_prompts(self, key: jax.Array, n: int) -> jax.Array:
        """int32 [n, P]: the prompts in order, cycled (every step sees each prompt once when
        n is their number, as TRL's sampler does over the 8-row dataset)."""
        del key
        return self.all_prompts()[jnp.arange(n) % len(self.prompts)]

    def reward(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """float32 [B]: the fraction of completion tokens that are a digit."""
        del prompts
        hit = completions[..., None] == jnp.asarray(self.digit_ids, jnp.int32)[None, None, :]
        return jnp.mean(jnp.any(hit, axis=-1).astype(jnp.float32), axis=-1)

    def mode_labels(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """int32 [B], all 0 (one mode)."""
        del prompts
        return jnp.zeros(completions.shape[:1], jnp.int32)


def fit_prompt(tok, instruction: str, digits: str, length: int) -> tuple[str, list[int]]:
    """(user text, prompt ids): `instruction`, a space and the shortest prefix of `digits`
    whose chat-template prompt is `length` tokens. ValueError when none is."""
    for k in range(1, len(digits) + 1):
        text = f"{instruction} {digits[:k]}"
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))
        if len(ids) == length:
            return text, ids
        if len(ids) > length:
            break
    raise ValueError(f"no digit prefix makes {instruction!r} a prompt of {length} tokens")


def digit_task(tok, prompt_len: int = PROMPT_LEN, completion_len: int = COMPLETION_LEN):
    """The W3 task of a `grpo_jax.models.tokenizer.GGUFTokenizer`."""
    fitted = [fit_prompt(tok, s, digits_of(i), prompt_len) for i, s in enumerate(INSTRUCTIONS)]
    digit_ids = tuple(tok.token_to_id(str(d)) for d in range(10))
    if any(i is None for i in digit_ids):
        raise ValueError("the tokenizer has no single-token digits")
    return DigitTask(
        prompts=tuple(tuple(ids) for _, ids in fitted),
        texts=tuple(text for text, _ in fitted),
        digit_ids=digit_ids,
        vocab_size=tok.vocab_size,
        special_ids=tuple(tok.special_ids),
        completion_len=completion_len,
    )


def make_hparams(lr: float = LR) -> Hparams:
    loss = losses.make_config(
        kl_estimator="k3", kl_placement="loss", beta=BETA, eps_low=EPS, eps_high=EPS
    )
    return Hparams(loss=jax.tree.map(jnp.float32, loss), lr=jnp.float32(lr), kl_index=jnp.int32(0))


def make(path: str, task: DigitTask, compute_dtype: str = "float32", seed: int = 0):
    """(setup, state, hp) of one W3 step on the GGUF file `path`: the policy starts as a copy
    of the reference (the file's weights, float32)."""
    config, ref, _ = gguf.load(
        path, max_len=task.prompt_len + task.completion_len, dtype=compute_dtype
    )
    setup = RLSetup(
        model=config,
        task=task,
        num_prompts=NUM_PROMPTS,
        group_size=GROUP_SIZE,
        inner_steps=1,
        temperature=1.0,
        grad_clip=0.0,
    )
    ref = jax.tree.map(jnp.asarray, ref)
    # A copy for the policy: the step donates the state, and params aliasing ref_params
    # would donate one buffer twice.
    policy = jax.tree.map(jnp.copy, ref)
    return setup, init_rl_state(setup, policy, ref, jax.random.PRNGKey(seed)), make_hparams()
