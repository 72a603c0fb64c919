"""Trainable subsets (grpo_jax/models/trainable.py): LoRA adapters in the model (exact at
zero, merge), gradients and Adam state only over the trainable leaves (last:K, lora), the
replayed forward with adapters, a LoRA GRPO run resumed bit for bit, config errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.configs import tasks as task_configs
from grpo_jax.models import lora, model as M, sampling, trainable
from grpo_jax.rl import train
from grpo_jax.run import build, checkpoint, runner
from train_helpers import member, reference, tiny_config

# The SmolLM2 options (grouped-query attention, tied embeddings) with every projection adapted.
LORA = lora.LoRAConfig(rank=2, alpha=4.0, targets=lora.LORA_TARGETS)
CFG = M.ModelConfig(
    vocab_size=13,
    num_layers=2,
    width=16,
    num_heads=4,
    num_kv_heads=2,
    mlp_width=24,
    max_len=12,
    tie_embeddings=True,
    lora=LORA,
)
BASE = M.base_config(CFG)


def _leaves(tree):
    return {
        "/".join(lora.path_names(p)): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_zero_initialised_adapters_give_the_base_model_exactly():
    """Fresh adapters (b = 0): forward, shared-prompt logits and sampled tokens are the base
    model's bit for bit; init's base weights are the base config's own."""
    key = jax.random.key(0)
    base = M.init(BASE, key)
    adapted = M.init(CFG, key)
    lora_leaves = {k: v for k, v in _leaves(adapted).items() if "_lora" in k}
    assert len(lora_leaves) == 2 * 7 * CFG.num_layers
    assert all(np.all(v == 0) for k, v in lora_leaves.items() if k.endswith("/b"))
    assert all(np.std(v) > 0 for k, v in lora_leaves.items() if k.endswith("/a"))
    assert {k: v for k, v in _leaves(adapted).items() if "_lora" not in k}.keys() == _leaves(
        base
    ).keys()
    for k, v in _leaves(base).items():
        np.testing.assert_array_equal(_leaves(adapted)[k], v)
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, CFG.vocab_size)
    fwd = jax.jit(M.forward, static_argnums=0)
    np.testing.assert_array_equal(fwd(CFG, adapted, tokens), fwd(BASE, base, tokens))
    prompts = tokens[:, :4]
    kw = dict(max_new_tokens=5, group_size=2, return_logits=True)
    a = sampling.sample(CFG, adapted, prompts, jax.random.key(2), **kw)
    b = sampling.sample(BASE, base, prompts, jax.random.key(2), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_merged_and_unmerged_adapters_agree_after_updates():
    """A few random updates of the adapters (b no longer 0), then `merge_adapters`: the base
    model with merged kernels gives the adapted model's logits (forward and sampling)."""
    params = M.init(CFG, jax.random.key(0))
    t, frozen = trainable.split("lora", CFG, params)
    for i in range(3):
        noise = {k: 0.05 * jax.random.normal(jax.random.key(10 + i), v.shape) for k, v in t.items()}
        t = jax.tree.map(jnp.add, t, noise)
    params = trainable.join(t, frozen)
    merged = M.merge_adapters(CFG, params)
    assert jax.tree.structure(merged) == jax.tree.structure(M.init(BASE, jax.random.key(0)))
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, CFG.vocab_size)
    adapted_logits = M.forward(CFG, params, tokens)
    base_logits = M.forward(BASE, M.init(BASE, jax.random.key(0)), tokens)
    assert np.abs(np.asarray(adapted_logits - base_logits)).max() > 1e-3  # they did move
    np.testing.assert_allclose(M.forward(BASE, merged, tokens), adapted_logits, atol=1e-5)
    kw = dict(max_new_tokens=5, group_size=2, return_logits=True)
    a = sampling.sample(CFG, params, tokens[:, :4], jax.random.key(2), **kw)
    b = sampling.sample(BASE, merged, tokens[:, :4], jax.random.key(2), **kw)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


@functools.lru_cache(maxsize=None)  # the replay test reuses the LoRA run's program and result
def _three_steps(spec: str, lora=None, replay=True):
    c = tiny_config()
    c.task = task_configs.task_config("fork", reward_kind="hamming")  # 2 + 3 tokens, graded
    task, mcfg, ref = reference(c)
    mcfg = dataclasses.replace(mcfg, num_layers=2, lora=lora)
    ref = M.init(M.base_config(mcfg), jax.random.key(0))
    setup = train.RLSetup(
        model=mcfg, task=task, num_prompts=2, group_size=8, trainable=spec, replay=replay
    )
    state = train.init_rl_state(setup, ref, ref, jax.random.PRNGKey(3))
    hp = train.Hparams(loss=build.make_loss_config(c), lr=jnp.float32(1e-2))
    run = train.make_rl_chunk(setup, chunk_steps=3)
    start = jax.tree.map(np.asarray, state)
    end, metrics = run(state, hp)
    return setup, start, end, metrics


@pytest.mark.parametrize("spec,lora", [("last:1", None), ("lora", LORA), ("lora:1", LORA)])
def test_only_trainable_leaves_move_and_adam_holds_only_them(spec, lora):
    """Three GRPO steps: every trainable leaf moved, every frozen one is bit for bit where it
    started (the reference too), and the Adam moments hold exactly the trainable leaves."""
    setup, start, end, metrics = _three_steps(spec, lora)
    before, after = _leaves(start.params), _leaves(end.params)
    want = {k for k in before if trainable.is_trainable(spec, setup.model, tuple(k.split("/")))}
    expected = {
        "last:1": {k for k in before if k.startswith("blocks/1/")},
        "lora": {k for k in before if "_lora/" in k},
        "lora:1": {k for k in before if "_lora/" in k and k.startswith("blocks/1/")},
    }[spec]
    assert want == expected and 0 < len(want) < len(before)
    assert setup.model.num_layers == 2  # the blocks before frozen_depth hold nothing to train
    assert trainable.frozen_depth(spec, setup.model) == {"last:1": 1, "lora": 0, "lora:1": 1}[spec]
    for k in before:
        moved = not np.array_equal(before[k], after[k])
        assert moved == (k in want), (k, moved)
    for a, b in zip(jax.tree.leaves(start.ref_params), jax.tree.leaves(end.ref_params)):
        np.testing.assert_array_equal(a, b)
    adam = [s for s in jax.tree.leaves(end.opt_state, is_leaf=lambda x: hasattr(x, "mu"))]
    adam = [s for s in adam if hasattr(s, "mu")]
    assert len(adam) == 1 and set(adam[0].mu) == want == set(adam[0].nu)
    n_state = sum(x.size for x in jax.tree.leaves(end.opt_state))
    n_train = sum(before[k].size for k in want)
    assert n_state == 2 * n_train + 1  # mu, nu and Adam's step count
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))


def test_gradients_reach_only_the_trainable_leaves():
    """The loss's gradient is taken with respect to the trainable dict alone, and each of its
    leaves gets one (b first: a's gradient is zero while b is)."""
    params = M.init(CFG, jax.random.key(0))
    whole, none = trainable.split("all", CFG, params)  # "all": the pytree itself, no split
    assert whole is params and none is None and trainable.join(whole, none) is params
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, CFG.vocab_size)
    for spec in ("last:1", "lora"):
        t, frozen = trainable.split(spec, CFG, params)
        loss = lambda p: jnp.mean(M.forward(CFG, trainable.join(p, frozen), tokens) ** 2)
        grads = jax.grad(loss)(t)
        assert set(grads) == set(t) and not set(t) & set(frozen.leaves)
        nonzero = {k for k, g in grads.items() if np.any(np.asarray(g) != 0)}
        if spec == "lora":
            assert nonzero == {k for k in t if k.endswith("/b")}
        else:
            assert nonzero == {k for k in t if "_lora" not in k} and all(
                k.startswith("blocks/1/") for k in t
            )


def test_lora_replayed_step_equals_recomputed():
    """With adapters the loss's replayed forward (`Tape`) and the recomputed one agree."""
    _, _, s1, m1 = _three_steps("lora", LORA, replay=True)
    _, _, s0, m0 = _three_steps("lora", LORA, replay=False)
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def _lora_config(steps):
    c = tiny_config(steps=steps, chunk=2)
    c.train.trainable = "lora"
    c.train.lora.update(rank=2, alpha=4.0, targets="q,v,up")
    c.train.num_seeds = 2  # a population of two members
    return c


def test_lora_run_resumes_bit_for_bit(tmp_path):
    """A LoRA population of two: killed after 2 of 3 chunks and resumed from its checkpoint,
    it ends bit for bit where the uninterrupted run does; base weights never move; the
    final evaluation reads the adapted members against the base model."""
    quiet = lambda *_: None
    c = _lora_config(6)
    _, _, ref = reference(c)
    logs = []
    full = runner.run_population(
        c, build.population_cells(c), str(tmp_path / "full"), ref_params=ref, log=logs.append
    )
    n_adapters = 2 * 2 * (32 + 32) + 2 * (32 + 64)  # q, v: 2 (D + D); up: 2 (D + M)
    assert f"trainable lora: {n_adapters:,} of" in "\n".join(logs)
    assert full.setup.trainable == "lora" and full.setup.model.lora.targets == ("q", "v", "up")
    c_cut = _lora_config(4)
    runner.run_population(
        c_cut, build.population_cells(c_cut), str(tmp_path / "cut"), ref_params=ref, log=quiet
    )
    assert checkpoint.latest_step(str(tmp_path / "cut" / "checkpoints")) == 4
    resumed = runner.run_population(
        c, build.population_cells(c), str(tmp_path / "cut"), ref_params=ref, log=quiet
    )
    assert resumed.start_step == 4
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for i in range(2):
        p = _leaves(member(full.state.params, i))
        for k, v in _leaves(ref).items():  # base weights frozen at the reference's
            np.testing.assert_array_equal(p[k], v)
        assert any(np.any(v != 0) for k, v in p.items() if k.endswith("_lora/b"))
    a0, a1 = (_leaves(member(full.state.params, i))["blocks/0/attn/q_lora/a"] for i in (0, 1))
    assert not np.array_equal(a0, a1)  # each member draws its own adapters
    ev = runner.final_evaluation(full)  # exact evaluation of the adapted members
    assert ev["members"] == 2 and np.all(np.isfinite(ev["reward"]))
    assert np.all(np.asarray(ev["exact_kl_rev"]) > 0)  # they moved off the base model


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("train.trainable", "some", r"config.train.trainable: 'some' .*valid: all, last:K"),
        ("train.trainable", "last:x", r"config.train.trainable: 'last:x' is not a trainable"),
        ("train.trainable", "last:3", r"config.train.trainable: 'last:3': K = 3 exceeds"),
        ("train.lora.targets", "q,x", r"config.train.lora.targets: 'q,x' .*q, k, v, o, gate"),
        ("train.lora.rank", 0, r"config.train.lora.rank: 0; must be an integer >= 1"),
        ("train.lora.alpha", -1.0, r"config.train.lora.alpha: -1.0; must be a finite"),
        ("policy", "tabular", r"config.train.trainable: 'lora' is for the transformer"),
    ],
)
def test_bad_trainable_spec_names_the_key(field, value, match):
    c = tiny_config()
    c.train.trainable = "last:x" if field == "train.trainable" else "lora"
    if field == "train.trainable":
        c.train.trainable = value
    elif field == "policy":
        c.policy = value
    else:
        c.train.lora[field.split(".")[-1]] = value
    with pytest.raises(ValueError, match=match) as info:
        build.validate_config(c)
    assert "\n" not in str(info.value)
