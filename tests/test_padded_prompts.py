"""Prompts of different lengths in the GRPO step (rl/rollout.py): a right-padded batch is
sampled and scored as each prompt alone, the step runs with them, and a task without
lengths runs the programs it ran before.

A tiny random transformer (grouped-query attention, tied embeddings, as SmolLM2) over a
vocabulary of 40 ids stands in for the real model: ids 30..39 are the digits, 0 pads.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.core import losses
from grpo_jax.models import model as model_lib
from grpo_jax.rl import train
from grpo_jax.tasks import answer_tree, number_text

CFG = model_lib.ModelConfig(
    vocab_size=40,
    num_layers=2,
    width=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_width=64,
    max_len=12,
    tie_embeddings=True,
)
DIGITS = tuple(range(30, 40))
VALID = ((11, 13, 17), (2, 4, 6, 8), tuple(range(10, 30)))


def _task(lengths=(5, 7, 6), p=7):
    rng = np.random.default_rng(0)
    prompts = tuple(tuple(int(x) for x in rng.integers(2, 30, n)) + (0,) * (p - n) for n in lengths)
    return number_text.NumberText(
        prompts=prompts,
        lengths=lengths,
        valid=VALID,
        digit_ids=DIGITS,
        vocab_size=40,
        special_ids=(1,),
    )


def _params(seed=0):
    return model_lib.init(CFG, jax.random.PRNGKey(seed))


@dataclasses.dataclass(frozen=True)
class _NoLengths:
    """A task exactly as `task` but without ``prompt_lengths``."""

    task: Any

    def __getattr__(self, name):
        if name == "prompt_lengths":
            raise AttributeError(name)
        return getattr(self.task, name)


@dataclasses.dataclass(frozen=True)
class _FullLengths(_NoLengths):
    """A task whose ``prompt_lengths`` gives every prompt its whole length P."""

    def prompt_lengths(self, prompts):
        return jnp.full(prompts.shape[:1], prompts.shape[1], jnp.int32)


def test_padded_batch_scores_as_each_prompt_alone():
    """The sampler's log-probs of a padded batch equal the teacher-forced ones with the
    lengths, and those equal each group's completions scored after its prompt unpadded."""
    task, params = _task(), _params()
    setup = train.RLSetup(model=CFG, task=task, num_prompts=4, group_size=3)
    batch = jax.jit(lambda p, k: train.rollout(setup, p, k))(params, jax.random.PRNGKey(1))
    index = np.asarray(task.prompt_index(batch.group_prompts))
    np.testing.assert_array_equal(batch.lengths, np.asarray(task.lengths)[index])
    assert len(set(index.tolist())) > 1  # prompts of different lengths in one batch

    @jax.jit
    def logp(prompts, tokens, lengths=None):
        logits = train.policy_logits(setup, params, prompts, tokens, prompt_lengths=lengths)
        return model_lib.token_logprobs(logits, tokens)

    padded = logp(batch.group_prompts, batch.tokens, batch.lengths)
    np.testing.assert_allclose(padded, batch.old_logp, atol=2e-5)
    g = setup.group_size
    for n, i in enumerate(index):
        own = jnp.asarray(task.prompts[i][: task.lengths[i]], jnp.int32)[None]
        rows = slice(n * g, (n + 1) * g)
        np.testing.assert_allclose(padded[rows], logp(own, batch.tokens[rows]), atol=2e-5)
    # Without the lengths the padding is read as prompt tokens: other numbers.
    assert not np.allclose(logp(batch.group_prompts, batch.tokens), padded, atol=1e-3)


def test_grpo_step_with_padded_prompts_runs_and_replay_agrees():
    """A step with padded prompts (the KL choices exact forward in the loss and on the
    reference's own samples, one switch): finite and moving; the sampler's forward
    replayed gives the step of the recomputed one."""
    task, ref = _task(), _params()
    policy = jax.tree.map(lambda x: x + 0.02 * jnp.sin(x * 7.0), ref)  # a little off the ref
    hp = train.Hparams(
        loss=losses.LossConfig(beta=0.1), lr=jnp.float32(1e-2), kl_index=jnp.int32(1)
    )
    setups = [
        train.RLSetup(
            model=CFG,
            task=task,
            num_prompts=3,
            group_size=4,
            replay=replay,
            kl_choices=("exact_fwd/loss", "exact_fwd/ref_samples"),
        )
        for replay in (True, False)
    ]
    state = train.init_rl_state(setups[0], policy, ref, jax.random.PRNGKey(3))
    both = jax.jit(lambda s, h: [train.rl_step(setup, s, h) for setup in setups])(state, hp)
    (s1, m1), (s0, m0) = both
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    for k in ("loss", "grad_norm", "exact_kl_rev", "exact_kl_fwd", "reward_mean", "entropy"):
        assert np.isfinite(float(m1[k])), k
    assert float(m1["update_norm"]) > 0 and float(m1["nonfinite"]) == 0


def test_a_task_without_lengths_runs_the_programs_it_ran_before():
    """Unpadded prompts: `NumberText.prompt_lengths` is None, and the step's program is the
    one of a task without the method (the same lowered text); full lengths given anyway
    compute the same numbers."""
    task = _task(lengths=(7, 7, 7))
    assert not task.padded and task.prompt_lengths(task.all_prompts()) is None
    params = _params()
    hp = train.Hparams(loss=losses.LossConfig(beta=0.1), lr=jnp.float32(1e-2))

    def lowered(t):
        setup = train.RLSetup(model=CFG, task=t, num_prompts=2, group_size=4)
        state = train.init_rl_state(setup, params, params, jax.random.PRNGKey(3))
        step = jax.jit(lambda s, h: train.rl_step(setup, s, h))
        return step.lower(state, hp).as_text(), step(state, hp)

    text, (s_task, m_task) = lowered(task)
    text_none, _ = lowered(_NoLengths(task))
    assert text == text_none
    text_full, (s_full, m_full) = lowered(_FullLengths(task))
    assert text_full != text  # the lengths path is another program ...
    for k in ("loss", "reward_mean", "exact_kl_rev", "grad_norm"):  # ... with the same numbers
        np.testing.assert_allclose(m_full[k], m_task[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s_full.params), jax.tree.leaves(s_task.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_number_text_padding_index_and_the_trees_parse():
    """Padded prompts: `prompt_index` finds each, `prompt_lengths` gives its length; bad
    lengths are refused; the number parse is the answer tree's (`answer_tree.ANSWER`) on
    every lumped leaf."""
    task = _task()
    rows = task.all_prompts()[jnp.asarray([2, 0, 1, 2])]
    np.testing.assert_array_equal(task.prompt_index(rows), [2, 0, 1, 2])
    np.testing.assert_array_equal(task.prompt_lengths(rows), [6, 5, 7, 6])
    with pytest.raises(ValueError, match="one length in"):
        dataclasses.replace(task, lengths=(5, 8, 6))
    with pytest.raises(ValueError, match="one token length"):
        number_text.NumberText(
            prompts=((1, 2), (3,)), valid=VALID[:2], digit_ids=DIGITS, vocab_size=40
        )
    other = 7  # a non-digit token stands for the lumped "other" symbol
    symbol = lambda s: DIGITS[s] if s < 10 else other
    pairs = [(a, b) for a in range(11) for b in range(11)]
    comps = jnp.asarray([[symbol(a), symbol(b)] for a, b in pairs], jnp.int32)
    want = [answer_tree.ANSWER[a, b] for a, b in pairs]
    want = [-1 if n == answer_tree.NO_NUMBER else n for n in want]
    np.testing.assert_array_equal(task.numbers(comps), want)
