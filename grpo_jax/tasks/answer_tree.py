"""Number answers of a real LM as an exactly enumerable two-level tree.

A prompt asks for a number with a property and ends with the start of the reply, written up
to the number ("... A prime number between 10 and 50 is "). The model writes one token per
digit, so the answer is read from the first two reply tokens, as `number_text.NumberText`
reads it: ``d1 d2`` (digits, ``d1 != 0``) is ``10 d1 + d2``; ``d`` then a non-digit is
``d``; anything else is no number ("other", reward 0). Lumping every non-digit token into
one symbol ("x", index 10) gives the *lumped tree*: 11 first symbols, then 11 second
symbols after each digit, 121 leaves, each one answer of ``0..99`` or "other" (`ANSWER`).
Both KL-regularised optima depend on a node's tokens only through (reference probability,
value), and every non-digit token at a node has the same value, so the lumped tree carries
the closed forms exactly (grpo_jax/study/answer_level.py).

Prompt families (`FAMILIES`; a prompt is ``(family, a, b)``): ``prime`` (a prime between a
and b), ``even`` (an even number between a and b), ``multiple`` (a multiple of a below 100;
b unused), ``range`` (a random number between a and b, inclusive). Reward 1 for a valid
number, else 0.

`AnswerTree` is the task of exact-gradient training on these trees (rl/answer_tree.py): a
frozen, hashable dataclass of token ids and, optionally, a `Constant` trunk (the hidden
states entering the first trainable block, `models.answer_tree.trunk`) computed once from
the frozen weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from grpo_jax.core.checks import check_name

OTHER = 10  # the lumped non-digit symbol
NUM_SYMBOLS = 11
NO_NUMBER = 100  # answer index of "other"
SUFFIX = " Reply with only the number."

FAMILIES = {
    "prime": (
        "Name a prime number between {a} and {b}.",
        "A prime number between {a} and {b} is ",
    ),
    "even": (
        "Name an even number between {a} and {b}.",
        "An even number between {a} and {b} is ",
    ),
    "multiple": (
        "Name a multiple of {a} that is less than 100.",
        "A multiple of {a} that is less than 100 is ",
    ),
    "range": (
        "Pick a random number between {a} and {b}.",
        "My random number between {a} and {b} is ",
    ),
}


def primes(n: int = 100) -> np.ndarray:
    """``[n]`` bool: which of 0..n-1 are prime."""
    s = np.ones(n, bool)
    s[:2] = False
    for i in range(2, int(n**0.5) + 1):
        s[i * i :: i] = False
    return s


def valid_numbers(family: str, a: int, b: int = 0) -> np.ndarray:
    """``[100]`` bool: which of 0..99 answer the prompt ``(family, a, b)``."""
    check_name("prompt family", family, tuple(FAMILIES))
    n = np.arange(100)
    valid = {
        "prime": lambda: primes() & (n > a) & (n < b),
        "even": lambda: (n % 2 == 0) & (n > a) & (n < b),
        "multiple": lambda: (n % max(int(a), 1) == 0) & (n > 0),
        "range": lambda: (n >= a) & (n <= b),
    }[family]()
    if not valid.any():
        raise ValueError(f"prompt {(family, a, b)} has no valid number in 0..99")
    return valid


def prompt_texts(family: str, a: int, b: int = 0) -> tuple[str, str]:
    """``(user text, reply start)`` of a prompt."""
    check_name("prompt family", family, tuple(FAMILIES))
    question, reply = FAMILIES[family]
    return question.format(a=a, b=b) + SUFFIX, reply.format(a=a, b=b)


def _answer_index() -> np.ndarray:
    idx = np.full((NUM_SYMBOLS, NUM_SYMBOLS), NO_NUMBER, np.int32)
    for d in range(10):
        idx[d, OTHER] = d
        if d:
            idx[d, :10] = 10 * d + np.arange(10)
    return idx


ANSWER = _answer_index()  # [11, 11]: the answer (0..99, 100 = other) of each lumped leaf
ANSWER.setflags(write=False)


def tree_rewards(valid: np.ndarray) -> np.ndarray:
    """``valid [..., 100]`` bool -> rewards ``[..., 11, 11]`` float64 of the lumped leaves."""
    v = np.concatenate([np.asarray(valid, np.float64), np.zeros_like(valid[..., :1], float)], -1)
    return v[..., ANSWER]


def answer_distribution(leaf_probs) -> np.ndarray:
    """``[..., 11, 11]`` leaf probabilities -> ``[..., 101]`` answer probabilities (100 =
    other), float64."""
    p = np.asarray(leaf_probs, np.float64)
    onehot = np.eye(101)[ANSWER.reshape(-1)]  # [121, 101]
    return p.reshape(p.shape[:-2] + (-1,)) @ onehot


class Constant:
    """A NumPy array that is hashable by content (a SHA-256 of its bytes, dtype and shape),
    so a frozen task holding it stays a valid static jit argument."""

    def __init__(self, value):
        self.value = np.ascontiguousarray(value)
        self.value.setflags(write=False)
        h = hashlib.sha256(self.value.tobytes())
        h.update(f"{self.value.dtype}{self.value.shape}".encode())
        self.digest = h.hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, Constant) and other.digest == self.digest

    def __repr__(self) -> str:
        return f"Constant({self.value.dtype}{list(self.value.shape)}, {self.digest[:12]})"


@dataclasses.dataclass(frozen=True)
class AnswerTree:
    """Exact-gradient training on the answer trees of a prompt set (module docstring).

    Attributes:
      prompts: token ids, right-padded with 0 to one length P.
      lengths: each prompt's own length.
      valid: per prompt, the valid numbers (a tuple of ints in 0..99).
      digit_ids: the token of each digit 0..9.
      vocab_size: the model's vocabulary.
      special_ids: tokens never written (banned in every distribution, as the sampler does).
      texts: user texts (reports).
      depth: the first block that trains; ``trunk`` enters it.
      trunk: `Constant`s ``(prompt [N, P, D], next [N*10, 1, D])`` float32, the hidden states
        entering block ``depth`` computed from the frozen weights; None: the step embeds the
        prompts itself (``depth`` must then be 0).
    """

    prompts: tuple
    lengths: tuple
    valid: tuple
    digit_ids: tuple
    vocab_size: int
    special_ids: tuple = ()
    texts: tuple = ()
    depth: int = 0
    trunk: Any = None
    name: str = "answer_tree"
    exact_tree = True  # rl/train.py runs rl/answer_tree.py's exact step for this task
    completion_len = 2
    num_modes = 1

    def __post_init__(self):
        n = len(self.prompts)
        if not n or len(self.lengths) != n or len(self.valid) != n:
            raise ValueError(
                f"{self.name}: prompts ({n}), lengths ({len(self.lengths)}) and valid "
                f"({len(self.valid)}) must be non-empty and the same length"
            )
        if len({len(p) for p in self.prompts}) != 1:
            raise ValueError(f"{self.name}: prompts must be right-padded to one length")
        if len(self.digit_ids) != 10:
            raise ValueError(f"{self.name}: digit_ids must hold 10 ids")
        if self.trunk is None and self.depth:
            raise ValueError(f"{self.name}: depth {self.depth} needs a trunk")

    @property
    def prompt_len(self) -> int:
        return len(self.prompts[0])

    def valid_table(self) -> np.ndarray:
        """``[N, 100]`` bool."""
        t = np.zeros((len(self.prompts), 100), bool)
        for i, v in enumerate(self.valid):
            t[i, list(v)] = True
        return t

    def arrays(self) -> dict[str, jnp.ndarray]:
        """The task's constants as JAX arrays (prompts, lengths, digits, rewards [N, 11, 11])."""
        return dict(
            prompts=jnp.asarray(np.asarray(self.prompts, np.int32)),
            lengths=jnp.asarray(np.asarray(self.lengths, np.int32)),
            digit_ids=jnp.asarray(np.asarray(self.digit_ids, np.int32)),
            rewards=jnp.asarray(tree_rewards(self.valid_table()), jnp.float32),
        )


def make(tok, prompt_specs, *, pad_id: int = 0) -> AnswerTree:
    """An `AnswerTree` of ``prompt_specs`` (``(family, a, b)`` each) rendered with ``tok``'s
    chat template (no trunk: `with_trunk` adds one)."""
    ids, valid, texts = [], [], []
    for spec in prompt_specs:
        family, a, b = (tuple(spec) + (0,))[:3]
        user, reply = prompt_texts(family, int(a), int(b))
        chat = tok.apply_chat_template([{"role": "user", "content": user}])
        ids.append(tok.encode(chat + reply))
        valid.append(tuple(int(x) for x in np.flatnonzero(valid_numbers(family, a, b))))
        texts.append(user)
    digit_ids = tuple(tok.token_to_id(str(d)) for d in range(10))
    if any(i is None for i in digit_ids):
        raise ValueError("the tokenizer has no single-token digits")
    p = max(len(i) for i in ids)
    return AnswerTree(
        prompts=tuple(tuple(i) + (pad_id,) * (p - len(i)) for i in ids),
        lengths=tuple(len(i) for i in ids),
        valid=tuple(valid),
        digit_ids=digit_ids,
        vocab_size=int(tok.vocab_size),
        special_ids=tuple(tok.special_ids),
        texts=tuple(texts),
    )
