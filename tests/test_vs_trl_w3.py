"""benchmarks/vs_trl.py's W3 workload, grpo_jax side (benchmarks/w3.py), on the tiny GGUF
file of tests/test_gguf.py instead of SmolLM2: the prompts are fitted to one length with the
file's tokenizer and chat template, and one compiled GRPO step runs with a finite loss.
No torch or TRL."""

import jax
import numpy as np
import pytest

from benchmarks import w3
from grpo_jax.models import tokenizer
from grpo_jax.rl.train import make_rl_chunk


def test_w3_prompts_have_one_length_and_the_chat_template(tiny_gguf_path):
    tok = tokenizer.from_gguf(tiny_gguf_path)
    task = w3.digit_task(tok)
    assert len(task.prompts) == w3.NUM_PROMPTS == len(w3.INSTRUCTIONS)
    assert {len(p) for p in task.prompts} == {w3.PROMPT_LEN}
    for text, ids in zip(task.texts, task.prompts):
        chat = tok.apply_chat_template([{"role": "user", "content": text}])
        assert tok.encode(chat) == list(ids)
    assert task.special_ids == tuple(tok.special_ids)
    with pytest.raises(ValueError, match="no digit prefix"):
        w3.fit_prompt(tok, w3.INSTRUCTIONS[0], "12", w3.PROMPT_LEN)


def test_w3_reward_is_the_digit_fraction(tiny_gguf_path):
    task = w3.digit_task(tokenizer.from_gguf(tiny_gguf_path))
    d = task.digit_ids
    completions = np.array([[d[0], d[9], 100, 101], [100, 101, 102, 103]], np.int32)
    np.testing.assert_allclose(task.reward(None, completions), [0.5, 0.0])


def test_w3_step_runs_on_a_tiny_gguf(tiny_gguf_path):
    task = w3.digit_task(tokenizer.from_gguf(tiny_gguf_path))
    setup, state, hp = w3.make(tiny_gguf_path, task)
    assert setup.batch_size == w3.NUM_PROMPTS * w3.GROUP_SIZE
    assert setup.grad_clip == 0.0
    state, metrics = make_rl_chunk(setup, 1)(state, hp)
    jax.block_until_ready(state)
    assert np.isfinite(float(metrics["loss"][-1]))
    assert float(metrics["nonfinite"][-1]) == 0.0
    assert float(metrics["completion_len"][-1]) == w3.COMPLETION_LEN
    assert 0.0 <= float(metrics["reward_mean"][-1]) <= 1.0
    assert int(state.step) == 1
