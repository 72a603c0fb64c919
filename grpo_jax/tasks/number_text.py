"""A text task for a real tokenizer: name a number with a property (several valid answers).

    tok = tokenizer.from_gguf(path)
    task = number_text.prime_task(tok)   # "Name a prime number between 10 and 50." x ranges
    setup = train.RLSetup(model=config, task=task, num_prompts=N, group_size=G, ...)

Each prompt is a chat-template user turn followed by the start of the assistant's reply,
written up to the number ("... A prime number between 10 and 50 is "), so the completion
(``completion_len`` = 2 tokens; SmolLM2 writes one token per digit) is the answer:

* ``d1 d2`` (two digits, ``d1 != 0``): the number ``10 d1 + d2``;
* ``d x`` (a digit, then a non-digit): the number ``d``;
* anything else: no number.

Reward 1 if the number is valid for the prompt (e.g. a prime inside the range), else 0: a
verifiable reward with several valid answers. ``mode_labels`` is the index of the answer in
``answers`` (the sorted union of every prompt's valid numbers), -1 otherwise, so
``train.step_metrics``'s ``mode_shares`` is the share of each valid answer.

The task is a frozen, hashable dataclass (a static jit argument) that holds token ids only;
it has the interface ``train.RLSetup`` uses (``sample_prompts``, ``reward``,
``mode_labels``, ``num_modes``, ``special_ids``, ``completion_len``, ``vocab_size``). No
exact answer table: the reference is the pretrained model.

Prompts of different token lengths are right-padded to one length P with their own lengths
in ``lengths``; `NumberText.prompt_lengths` then gives the step each group's length
(rl/rollout.py), and None when no prompt is padded (the step then runs as for a task without
lengths). Without ``lengths`` every prompt must have the same length (`prime_task`'s
two-digit ranges). `from_specs` builds the task of the answer-level prompt specs
(tasks/answer_tree.py: the same families, texts, valid numbers and padding), `from_tree`
from an `answer_tree.AnswerTree` of them: the number parse here is the tree's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.tasks import answer_tree

PRIME_QUESTION = "Name a prime number between {lo} and {hi}. Reply with only the number."
PRIME_REPLY = "A prime number between {lo} and {hi} is "


@dataclasses.dataclass(frozen=True)
class NumberText:
    """See the module docstring.

    Attributes:
      prompts: token ids of each prompt, all of one length P (right-padded when ``lengths``
        says so; padded prompts must then differ as rows, so `prompt_index` finds each).
      valid: per prompt, the valid numbers (each in 0..99).
      digit_ids: the token of each digit 0..9.
      vocab_size: the model's vocabulary.
      special_ids: tokens never sampled (the tokenizer's control tokens).
      texts: each prompt's user text (for reports).
      completion_len: T (2: one- and two-digit numbers).
      name: task name.
      lengths: each prompt's own length (default ``()``: every prompt is P long).
    """

    prompts: tuple
    valid: tuple
    digit_ids: tuple
    vocab_size: int
    special_ids: tuple = ()
    texts: tuple = ()
    completion_len: int = 2
    name: str = "number_text"
    lengths: tuple = ()

    def __post_init__(self):
        sizes = {len(p) for p in self.prompts}
        if len(sizes) != 1:
            raise ValueError(
                f"{self.name}: prompts must share one token length (right-pad them and give "
                f"their lengths), got {sorted(sizes)}"
            )
        p = sizes.pop()
        if not self.lengths:
            object.__setattr__(self, "lengths", (p,) * len(self.prompts))
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        if len(self.lengths) != len(self.prompts) or not all(1 <= n <= p for n in self.lengths):
            raise ValueError(
                f"{self.name}: lengths must hold one length in [1, {p}] per prompt, got "
                f"{self.lengths}"
            )
        if self.padded and len(set(map(tuple, self.prompts))) != len(self.prompts):
            raise ValueError(f"{self.name}: two padded prompts are the same row of ids")
        if len(self.valid) != len(self.prompts) or not all(self.valid):
            raise ValueError(f"{self.name}: every prompt needs a non-empty set of valid " "numbers")
        if len(self.digit_ids) != 10:
            raise ValueError(f"{self.name}: digit_ids must hold 10 ids")
        if self.completion_len != 2:
            raise ValueError(f"{self.name}: completion_len must be 2 (numbers 0..99)")

    @property
    def prompt_len(self) -> int:
        return len(self.prompts[0])

    @property
    def answers(self) -> tuple[int, ...]:
        """Every prompt's valid numbers, sorted: the modes, in label order."""
        return tuple(sorted({n for v in self.valid for n in v}))

    @property
    def num_modes(self) -> int:
        return len(self.answers)

    @property
    def padded(self) -> bool:
        """Whether some prompt is shorter than P (right-padded)."""
        return any(n < self.prompt_len for n in self.lengths)

    def all_prompts(self) -> jax.Array:
        return jnp.asarray(np.asarray(self.prompts, np.int32))

    def _valid_table(self) -> jax.Array:
        t = np.zeros((len(self.prompts), 100), bool)
        for i, v in enumerate(self.valid):
            t[i, list(v)] = True
        return jnp.asarray(t)

    def sample_prompts(self, key: jax.Array, n: int) -> jax.Array:
        idx = jax.random.randint(key, (n,), 0, len(self.prompts))
        return self.all_prompts()[idx]

    def prompt_index(self, prompts: jax.Array) -> jax.Array:
        """[B, P] -> [B] index into ``prompts`` (0 for an unknown prompt)."""
        eq = jnp.all(prompts[:, None, :] == self.all_prompts()[None, :, :], axis=-1)
        return jnp.argmax(eq, axis=-1)

    def prompt_lengths(self, prompts: jax.Array) -> jax.Array | None:
        """[N, P] -> [N] int32: each prompt's own length; None when no prompt is padded (so
        the step runs the programs of unpadded prompts)."""
        if not self.padded:
            return None
        return jnp.asarray(self.lengths, jnp.int32)[self.prompt_index(prompts)]

    def numbers(self, completions: jax.Array) -> jax.Array:
        """[B, 2] tokens -> [B] int32: the number written, or -1 (module docstring)."""
        digits = jnp.asarray(self.digit_ids, jnp.int32)
        hit = completions[:, :, None] == digits[None, None, :]  # [B, 2, 10]
        is_digit = jnp.any(hit, axis=-1)
        value = jnp.argmax(hit, axis=-1).astype(jnp.int32)  # [B, 2]
        d1, d2 = value[:, 0], value[:, 1]
        two = is_digit[:, 0] & is_digit[:, 1] & (d1 > 0)
        one = is_digit[:, 0] & ~is_digit[:, 1]
        return jnp.where(two, 10 * d1 + d2, jnp.where(one, d1, -1))

    def reward(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        n = self.numbers(completions)
        ok = self._valid_table()[self.prompt_index(prompts), jnp.clip(n, 0, 99)]
        return (ok & (n >= 0)).astype(jnp.float32)

    def mode_labels(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """Index of the number in ``answers`` when it is valid for the prompt, else -1."""
        n = self.numbers(completions)
        lookup = np.full(101, -1, np.int32)
        lookup[list(self.answers)] = np.arange(self.num_modes, dtype=np.int32)
        label = jnp.asarray(lookup)[jnp.where(n >= 0, n, 100)]
        return jnp.where(self.reward(prompts, completions) > 0, label, -1)


def prime_task(
    tok, ranges=((10, 50),), question: str = PRIME_QUESTION, reply: str = PRIME_REPLY
) -> NumberText:
    """ "Name a prime number between lo and hi" for each ``(lo, hi)`` of ``ranges`` (two-digit
    bounds keep the prompts one length), rendered with the tokenizer's chat template."""
    prompts, valid, texts = [], [], []
    for lo, hi in ranges:
        text = question.format(lo=lo, hi=hi)
        chat = tok.apply_chat_template([{"role": "user", "content": text}])
        prompts.append(tuple(tok.encode(chat + reply.format(lo=lo, hi=hi))))
        valid.append(
            tuple(int(n) for n in np.flatnonzero(answer_tree.valid_numbers("prime", lo, hi)))
        )
        texts.append(text)
    digit_ids = tuple(tok.token_to_id(str(d)) for d in range(10))
    if any(i is None for i in digit_ids):
        raise ValueError("the tokenizer has no single-token digits")
    return NumberText(
        prompts=tuple(prompts),
        valid=tuple(valid),
        digit_ids=digit_ids,
        vocab_size=tok.vocab_size,
        special_ids=tuple(tok.special_ids),
        texts=tuple(texts),
    )


def from_tree(tree: answer_tree.AnswerTree, name: str = "number_text") -> NumberText:
    """The sampled task of an answer tree's prompts (the same padded token ids, lengths,
    valid numbers and digits; no trunk: the sampler runs the whole model)."""
    return NumberText(
        prompts=tree.prompts,
        lengths=tree.lengths,
        valid=tree.valid,
        digit_ids=tree.digit_ids,
        vocab_size=tree.vocab_size,
        special_ids=tree.special_ids,
        texts=tree.texts,
        name=name,
    )


def from_specs(tok, specs, *, pad_id: int = 0) -> NumberText:
    """The task of the answer-level prompt specs (``(family, a, b)`` each,
    tasks/answer_tree.py `FAMILIES`) rendered with ``tok``'s chat template, right-padded
    with ``pad_id`` (`answer_tree.make`)."""
    return from_tree(answer_tree.make(tok, specs, pad_id=pad_id))
