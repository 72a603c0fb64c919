"""Answer trees of a real-LM-shaped model: the split pass, the exact objective against
sampling and finite differences, and exact training through the population loop.

A tiny random transformer (grouped-query attention, tied embeddings, as SmolLM2) over a
vocabulary of 40 ids stands in for the real model: ids 30..39 are the digits, 0 pads.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.models import answer_tree as tree_model, model as model_lib
from grpo_jax.rl import answer_tree
from grpo_jax.tasks import answer_tree as tree_task

CFG = model_lib.ModelConfig(
    vocab_size=40,
    num_layers=3,
    width=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_width=64,
    max_len=16,
    tie_embeddings=True,
)
DIGITS = tuple(range(30, 40))


def _task(**kw):
    rng = np.random.default_rng(0)
    lengths = (5, 7, 6)
    prompts = tuple(tuple(int(x) for x in rng.integers(1, 30, n)) + (0,) * (7 - n) for n in lengths)
    valid = (tuple(range(10, 20)), (3, 5, 7, 11, 13, 17, 19, 23), tuple(range(0, 100, 2)))
    return tree_task.AnswerTree(
        prompts=prompts,
        lengths=lengths,
        valid=valid,
        digit_ids=DIGITS,
        vocab_size=40,
        special_ids=(1,),
        **kw,
    )


def _params(seed):
    return model_lib.init(CFG, jax.random.PRNGKey(seed))


def test_split_pass_equals_teacher_forced_rows():
    """trunk + tree_logits at every depth = the model's own forward of each row prompt + d."""
    task, params = _task(), _params(0)
    a = task.arrays()
    want_root, want_second = [], []
    for p, n in zip(task.prompts, task.lengths):
        rows = jnp.asarray([list(p[:n]) + [d] for d in DIGITS], jnp.int32)
        logits = model_lib.forward(CFG, params, rows)
        want_root.append(logits[0, n - 1])
        want_second.append(logits[:, n])

    def split(params, depth):
        hidden = tree_model.trunk(CFG, params, a["prompts"], a["lengths"], a["digit_ids"], depth)
        return tree_model.tree_logits(CFG, params, hidden, a["lengths"], depth)

    split = jax.jit(split, static_argnums=1)
    for depth in range(CFG.num_layers + 1):
        root, second = split(params, depth)
        np.testing.assert_allclose(root, jnp.stack(want_root), atol=2e-5)
        np.testing.assert_allclose(second, jnp.stack(want_second), atol=2e-5)


def test_lumped_tree_rewards_and_answers():
    valid = np.zeros(100, bool)
    valid[[7, 42, 90]] = True
    r = tree_task.tree_rewards(valid)
    assert r[7, tree_task.OTHER] == 1 and r[4, 2] == 1 and r[9, 0] == 1
    assert r[0, 7] == 0  # "07" is not a number
    assert r[tree_task.OTHER].sum() == 0 and r.sum() == 3
    leaves = np.full((11, 11), 1 / 121)
    dist = tree_task.answer_distribution(leaves)
    assert dist.shape == (101,) and np.isclose(dist.sum(), 1)
    # "other": 11 leaves after x, 10 after "0 d": 21 of 121
    assert np.isclose(dist[100], 21 / 121) and np.isclose(dist[42], 1 / 121)
    with pytest.raises(ValueError, match="prompt family.*valid.*prime"):
        tree_task.valid_numbers("primes", 1, 10)


@pytest.mark.parametrize("forward", [False, True])
def test_objective_equals_sampled_expectation(forward):
    """At theta = theta_old, J is the mean of R - beta (root KL + KL at the digit prefix
    drawn): 200k draws per prompt, within 4 standard errors (about 0.003 here)."""
    task = _task()
    params, ref = _params(0), _params(1)
    root, second = answer_tree.tree_logits(task, CFG, params)
    ref_root, ref_second = answer_tree.tree_logits(task, CFG, ref)
    beta = 0.3
    exact, _ = answer_tree.objective(task, root, second, ref_root, ref_second, beta, forward)
    sampled = jax.jit(answer_tree.sampled_objective, static_argnums=(0, 1, 5, 7))
    est, se = sampled(task, CFG, params, ref, beta, forward, jax.random.PRNGKey(2), 200_000)
    assert abs(float(exact) - float(est.mean())) < 4 * float(jnp.sqrt(jnp.mean(se**2) / 3))


def test_gradient_matches_finite_differences():
    """The step's gradient (theta_old = theta, not differentiated) against central
    differences of J with the sampling weights held at theta_old, along random
    directions of every parameter (the gradient that also differentiates the weights, the
    sequence KL's, is 1.6 % away here: outside the tolerance)."""
    task = _task()
    params, ref = _params(0), _params(1)
    ref_root, ref_second = answer_tree.tree_logits(task, CFG, ref)
    root0, _ = answer_tree.tree_logits(task, CFG, params)
    old = jnp.exp(answer_tree.lumped(root0, task.arrays()["digit_ids"])[:, :10])
    for forward in (False, True):

        def j(p, old=None):
            root, second = answer_tree.tree_logits(task, CFG, p)
            return answer_tree.objective(
                task, root, second, ref_root, ref_second, 0.3, forward, old
            )[0]

        grad = jax.jit(jax.grad(j))(params)
        j = jax.jit(j)
        for seed in range(2):
            leaves, treedef = jax.tree.flatten(params)
            keys = jax.random.split(jax.random.PRNGKey(10 + seed), len(leaves))
            v = jax.tree.unflatten(
                treedef, [0.02 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
            )
            eps = 0.02  # a step of about 4e-4 per weight (weights ~0.02)
            shift = lambda s: jax.tree.map(lambda x, d: x + s * eps * d, params, v)
            fd = (float(j(shift(1.0), old)) - float(j(shift(-1.0), old))) / (2 * eps)
            analytic = sum(
                float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(v))
            )
            # 0.1 % here; differentiating through the sampling weights too is 1.6 % off
            assert abs(fd - analytic) <= 5e-3 * abs(analytic) + 5e-6, (forward, fd, analytic)


# ------------------------------------------------------------------------------------------
# Stage 0's closed forms
# ------------------------------------------------------------------------------------------


def _lumped_problem(seed=0, n=2):
    """A lumped tree as a model over 11 tokens (0..9 digits, 10 = other): random reference
    conditionals and valid sets."""
    rng = np.random.default_rng(seed)
    root = rng.dirichlet(np.full(11, 0.7), size=n)  # [N, 11]
    second = rng.dirichlet(np.full(11, 0.7), size=(n, 11))  # [N, 11, 11]
    valid = rng.random((n, 100)) < 0.3
    task = tree_task.AnswerTree(
        prompts=((1,),) * n,
        lengths=(1,) * n,
        valid=tuple(tuple(int(x) for x in np.flatnonzero(v)) for v in valid),
        digit_ids=tuple(range(10)),
        vocab_size=11,
    )
    return task, [root[:, None, :], second], tree_task.tree_rewards(valid)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_answer_level_closed_form_is_the_brute_force_optimum(direction):
    """The answer-level optimum against L-BFGS on the 121 leaves' logits of
    E[R] - beta KL over answers."""
    from scipy.optimize import minimize  # noqa: PLC0415

    from grpo_jax.core import kl  # noqa: PLC0415
    from grpo_jax.study import answer_level  # noqa: PLC0415
    from grpo_jax.tasks import sequence_optima  # noqa: PLC0415

    task, tables, rewards = _lumped_problem()
    beta = 0.4
    closed = answer_level.leaves(tables, rewards, beta, direction, "answer")
    ref = sequence_optima.joint_from_tables(tables)  # [N, 121]
    for i in range(2):
        r, q = jnp.asarray(rewards[i].reshape(-1)), jnp.asarray(np.log(ref[i]))

        def neg(z):
            z = jnp.asarray(z, jnp.float32)
            return -(jax.nn.softmax(z) @ r - beta * kl.exact(z, q, direction))

        f = jax.jit(jax.value_and_grad(neg))
        res = minimize(
            lambda z: tuple(np.asarray(x, np.float64) for x in f(z)),
            np.asarray(q),
            jac=True,
            method="L-BFGS-B",
            options=dict(maxiter=2000, gtol=1e-9),
        )
        brute = np.asarray(jax.nn.softmax(jnp.asarray(res.x, jnp.float32)))
        np.testing.assert_allclose(closed[i].reshape(-1), brute, atol=2e-4)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_per_node_target_is_the_stationary_point_of_the_step(direction):
    """The step's gradient (rl/answer_tree.py `objective`, on the lumped tree as an
    11-token model) vanishes at the per-node target, and not at the answer-level optimum:
    the two closed forms are the loss placement's and the answer KL's."""
    from grpo_jax.study import answer_level  # noqa: PLC0415

    task, tables, rewards = _lumped_problem(seed=1)
    beta = 0.3
    forward = direction == "forward"
    ref_root, ref_second = (
        jnp.log(jnp.asarray(t[:, 0] if k == 0 else t[:, :10], jnp.float32))
        for k, t in enumerate(tables)
    )

    def grad_at(level):
        leaves = answer_level.leaves(tables, rewards, beta, direction, level)  # [N, 11, 11]
        p0 = leaves.sum(-1)
        p1 = leaves[:, :10] / p0[:, :10, None]
        logits = (jnp.log(jnp.asarray(p0, jnp.float32)), jnp.log(jnp.asarray(p1, jnp.float32)))
        j = lambda lg: answer_tree.objective(task, *lg, ref_root, ref_second, beta, forward)[0]
        return max(float(jnp.abs(g).max()) for g in jax.tree.leaves(jax.grad(j)(logits)))

    assert grad_at("node") < 1e-5
    assert grad_at("answer") > 1e-3


def test_predictions_match_reward_and_answer_level_optima_coincide():
    """Stage 0 on the lumped problem: every matched beta reaches its reward target; with a
    0/1 reward the answer-level optima of the two directions are the same distribution at
    matched reward, the per-node targets are not."""
    from grpo_jax.study import answer_level  # noqa: PLC0415

    task, tables, rewards = _lumped_problem(seed=2)
    rows = answer_level.predict(task, tables, (0.5,))
    for r in rows:
        assert max(abs(v) for v in r["answer/delta"].values()) < 1e-6
        assert abs(r["node/forward"]["off_target"] - r["node/reverse"]["off_target"]) < 1e-6
        target = r["ref_reward"] + 0.5 * (1 - r["ref_reward"])
        assert abs(1 - r["node/forward"]["off_target"] - target) < 1e-6
    assert max(abs(r["node/delta"]["valid_tv_to_ref"]) for r in rows) > 1e-2


# ------------------------------------------------------------------------------------------
# The experiment on the tiny GGUF (the real model's code path)
# ------------------------------------------------------------------------------------------


def test_experiment_stages_on_the_tiny_gguf(tiny_gguf_path, tmp_path):
    """experiments/answer_level.py's two stages on a tiny GGUF model through the shared
    population loop: the reports are written, every member's exact objective rises, and
    the forward member, whose per-node target is far from the reference here (TV 0.57;
    the reverse one's is 0.04 away), moves towards it."""
    from grpo_jax.configs import answer_level as al_config  # noqa: PLC0415
    from grpo_jax.study import answer_level  # noqa: PLC0415

    config = al_config.get_config("test")
    config.update(gguf_path=tiny_gguf_path, steps=40, chunk_steps=10, log_every_steps=10)
    config.update(trainable=("all",), lrs=(1e-2,), betas=(0.3,))
    loaded = answer_level.load(config)
    rows = answer_level.run_predictions(config, str(tmp_path), loaded, log=lambda *a: None)
    assert len(rows) == len(config.fractions) * 3  # 2 training + 1 held-out prompt
    results = answer_level.run_training(
        config, al_config.grpo_config, str(tmp_path), loaded, log=lambda *a: None
    )
    cfg, params, task, _ = loaded
    tables = answer_level.reference_tables(task, cfg, params)
    rewards = tree_task.tree_rewards(task.valid_table())
    ref_answers = tree_task.answer_distribution(
        answer_level.leaves(tables, rewards, 1e9, "reverse", "node")
    )
    res = results["all"]
    objective = np.asarray(res["history"]["objective"])  # [members, logged steps]
    assert np.all(objective[:, -1] > objective[:, 0] + 1e-3), objective
    forward = [m for m in res["train"] if m["direction"] == "forward"][0]
    target = answer_level.target_answers(tables, rewards, forward["beta"], "forward")
    start = float(np.mean(answer_level.tv(ref_answers, target)))
    assert forward["tv_to_target"] < start - 0.02, (forward, start)  # 0.574 -> 0.529 here
    for name in ("predictions.md", "predictions.png", "training.md", "training.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "trainable `all`" in (tmp_path / "training.md").read_text()
