"""The fork task (enumerable sequences) and its four closed-form targets: the reference
table and Z0 against their closed forms, and each target against the exact expected
gradient of its own objective (zero there, not at the others' or at a wrong recursion)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.core import audit
from grpo_jax.tasks import fork, sequence_optima as so


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(num_branches=1, fork_depth=0, slip=0.2),
        dict(num_branches=4, fork_depth=2, slip=0.1, weights=(1.0, 2.0, 3.0, 4.0)),
        dict(num_branches=2, fork_depth=0, slip=0.01, target_branch=0),
    ],
)
def test_reference_is_a_distribution_and_z0_matches_its_closed_form(kw):
    task = fork.Fork(**kw)
    ref = task.reference_np()
    assert ref.shape == (task.num_prompts, task.num_tokens**task.length)
    np.testing.assert_allclose(ref.sum(-1), 1.0, atol=1e-12)
    w = task.branch_weights[task.target]
    z0 = fork.zero_reward_mass_closed_form(
        task.num_tokens, task.length, task.fork_depth, task.slip, w
    )
    assert task.zero_reward_mass() == pytest.approx(z0, abs=1e-12)
    # Branches agree before the fork and differ at and after it.
    paths = task.paths()
    d = task.fork_depth
    assert (paths[:, :, :d] == paths[:, :1, :d]).all()
    for t in range(d, task.length):
        assert all(len(set(paths[x, :, t])) == task.num_branches for x in range(task.num_prompts))


def test_slip_for_z0_inverts_the_closed_form_and_refuses_the_unreachable():
    for z0 in (0.55, 0.7, 0.9):  # >= 0.5: the other branch earns 0
        e = fork.slip_for_z0(z0, 8, 3, 1, 0.5)
        assert fork.Fork(slip=e).zero_reward_mass() == pytest.approx(z0, abs=1e-9)
    es = np.linspace(0.01, 0.5, 50)
    z = [fork.zero_reward_mass_closed_form(8, 3, 2, e, 0.25) for e in es]
    assert np.all(np.diff(z) > 0)  # the bisection's premise
    with pytest.raises(ValueError, match="out of reach"):
        fork.slip_for_z0(0.2, 8, 3, 1, 0.5)  # below the 0.5 floor of the other branch
    with pytest.raises(ValueError, match="out of reach|not monotone"):
        fork.slip_for_z0(0.6, 2, 1, 0, 0.25)  # Z0 = 0.75 - e/2 falls with e here


def test_reward_and_labels_on_device_match_the_tables():
    task = fork.Fork(num_branches=2, partial_reward=0.3)
    comps = jnp.asarray(task.completions_np())
    for x in range(task.num_prompts):
        prompts = jnp.tile(jnp.asarray([[task.bos_id, x]], jnp.int32), (comps.shape[0], 1))
        r = np.asarray(task.reward(prompts, comps))
        np.testing.assert_allclose(r, task.rewards_np()[x], atol=1e-7)
        labels = np.asarray(task.mode_labels(prompts, comps))
        paths = task.paths()[x]
        for k in range(task.num_branches):
            hit = np.all(task.completions_np() == paths[k], axis=-1)
            assert labels[hit].tolist() == [k]
            assert r[hit][0] == (1.0 if k == task.target else 0.3)
        assert (r > 0).sum() == task.num_branches
    bad = jnp.asarray([[task.bos_id, 0]], jnp.int32), jnp.asarray([[0, task.bos_id, 1]], jnp.int32)
    assert float(task.reward(*bad)[0]) == 0.0  # a special token scores 0
    with pytest.raises(ValueError, match="completions"):
        task.reward(jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 2), jnp.int32))


def test_conditionals_invert_the_joint_and_follow_the_trunk():
    task = fork.Fork(fork_depth=2, slip=0.1)
    ref = task.reference_np()
    tables = so.conditionals(ref, task.num_tokens, task.length)
    assert [t.shape for t in tables] == [(2, 1, 8), (2, 8, 8), (2, 64, 8)]
    np.testing.assert_allclose(so.joint_from_tables(tables), ref, atol=1e-14)
    # Before the fork the reference writes the trunk token with probability 1 - e.
    trunk = task.paths()[:, 0, 0]
    np.testing.assert_allclose(tables[0][np.arange(2), 0, trunk], 0.9, atol=1e-12)
    with pytest.raises(ValueError, match="last axis"):
        so.conditionals(ref[:, :-1], task.num_tokens, task.length)


# ---- the four targets against exact expected gradients ---------------------------------

V, T, BETA = 3, 3, 0.4


def _problem():
    """A tiny fork: 3 tokens, 3 positions, two branches forking at depth 1, one prompt."""
    task = fork.Fork(num_prompts=1, num_tokens=V, length=T, num_branches=2, fork_depth=1,
                     slip=0.15, weights=(0.6, 0.4), partial_reward=0.25)  # fmt: skip
    rewards = task.rewards_np()[0]
    ref_tables = [t[0] for t in so.conditionals(task.reference_np(), V, T)]
    return rewards, ref_tables


def _logits(tables):
    return [jnp.log(jnp.asarray(t, jnp.float32)) for t in tables]


SEQS = audit.enumerate_sequences(V, T)


def _exact_kl(p, q, direction):
    """Row-wise exact KL between probability tables [..., V]."""
    a, b = (p, q) if direction == "reverse" else (q, p)
    return jnp.sum(a * (jnp.log(a) - jnp.log(b)), axis=-1)


def _sequence_grad(tables, rewards, ref_tables, direction):
    """Gradient of E_pi[R] - beta KL_seq in `direction`, in the tables' logits."""

    def objective(logits):
        logp = jnp.sum(audit.sequence_logprobs(logits, SEQS), axis=-1)
        kl = audit.sequence_exact_kl(logits, _logits(ref_tables), direction, SEQS)
        return jnp.sum(jnp.exp(logp) * jnp.asarray(rewards, jnp.float32)) - BETA * kl

    return jax.flatten_util.ravel_pytree(jax.grad(objective)(_logits(tables)))[0]


def _loss_placed_grad(tables, rewards, ref_tables, direction):
    """GRPO's expected ascent direction with the exact KL in the loss: the reward's score
    function plus -beta sum_t E_{h ~ pi}[D(pi_t(.|h), ref_t(.|h))] with the prefix
    distribution held fixed (samples carry no gradient)."""
    fixed = [jnp.asarray(t, jnp.float32) for t in tables]

    def surrogate(logits):
        logp = audit.sequence_logprobs(logits, SEQS)  # [N, T]
        q = jnp.exp(jnp.sum(audit.sequence_logprobs(_logits(fixed), SEQS), axis=-1))
        score = jnp.sum(q * jnp.asarray(rewards, jnp.float32) * jnp.sum(logp, axis=-1))
        penalty = 0.0
        for t in range(T):
            prefix = (
                jnp.asarray(so.joint_from_tables(tables[:t]), jnp.float32) if t else jnp.ones(1)
            )
            pi_t = jax.nn.softmax(logits[t], axis=-1)
            d = _exact_kl(pi_t, jnp.asarray(ref_tables[t], jnp.float32), direction)
            penalty = penalty + jnp.sum(prefix * d)
        return score - BETA * penalty

    return jax.flatten_util.ravel_pytree(jax.grad(surrogate)(_logits(tables)))[0]


def _wrong_per_node(rewards, ref_tables, direction):
    """A deliberately wrong recursion: Q_R under the *reference* downstream, not pi."""
    tables = [None] * T
    q = np.asarray(rewards).reshape(V ** (T - 1), V)
    for t in range(T - 1, -1, -1):
        tables[t] = so.regularised_optimum(q, ref_tables[t], BETA, direction)
        if t:
            q = np.sum(ref_tables[t] * q, axis=-1).reshape(V ** (t - 1), V)
    return tables


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_each_target_is_stationary_for_its_own_objective_only(direction):
    rewards, ref_tables = _problem()
    ref = so.joint_from_tables(ref_tables)
    seq = so.conditionals(so.sequence_optimum(rewards, ref, BETA, direction), V, T)
    node = so.per_node_optimum(rewards, ref_tables, BETA, direction)
    wrong = _wrong_per_node(rewards, ref_tables, direction)
    norm = lambda g: float(jnp.linalg.norm(g))
    # The sequence optimum: the sequence objective's gradient vanishes; GRPO's does not.
    assert norm(_sequence_grad(seq, rewards, ref_tables, direction)) < 1e-5  # float32
    assert norm(_loss_placed_grad(seq, rewards, ref_tables, direction)) > 1e-3
    # The per-node target: GRPO's loss-placed gradient vanishes; the sequence one's does not.
    assert norm(_loss_placed_grad(node, rewards, ref_tables, direction)) < 1e-5  # float32
    assert norm(_sequence_grad(node, rewards, ref_tables, direction)) > 1e-3
    # The wrong recursion is stationary for neither.
    assert norm(_loss_placed_grad(wrong, rewards, ref_tables, direction)) > 1e-3
    # The two targets are different policies.
    diff = so.joint_from_tables(seq) - so.joint_from_tables(node)
    assert 0.5 * np.abs(diff).sum() > 1e-3


def test_per_node_equals_sequence_optimum_for_one_token():
    rewards = np.asarray([0.0, 1.0, 0.3, 0.0])
    ref = np.asarray([0.4, 0.1, 0.2, 0.3])
    for direction in ("reverse", "forward"):
        node = so.per_node_optimum(rewards, [ref[None, :]], 0.3, direction)[0][0]
        np.testing.assert_allclose(node, so.sequence_optimum(rewards, ref, 0.3, direction))


# ---- the per-prefix tabular policy and GRPO on it ------------------------------------


def test_sequence_tabular_reference_is_the_exact_table_and_samples_score_themselves():
    from grpo_jax.models import policies  # noqa: PLC0415

    task = fork.Fork(num_prompts=2, num_tokens=4, length=3, fork_depth=1, slip=0.1)
    policy = policies.make("tabular", task)
    assert isinstance(policy, policies.SequenceTabularPolicy)
    params = policies.reference_params(task)
    np.testing.assert_allclose(
        so.joint_from_tables(policy.tables(params)), task.reference_np(), atol=1e-6
    )
    prompts = jnp.repeat(task.all_prompts(), 64, axis=0)
    out = policies.sample(policy, params, prompts, jax.random.PRNGKey(0), banned_tokens=(4,))
    assert out.tokens.shape == (128, 3) and int(out.tokens.max()) < 4
    # The sampler's log-probs are the teacher-forced ones of the tokens it drew.
    logits = policy.completion_logits(params, prompts, out.tokens)
    teacher = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), out.tokens[..., None], -1)
    np.testing.assert_allclose(np.asarray(out.logp), np.asarray(teacher[..., 0]), atol=1e-5)
    with pytest.raises(ValueError, match="length 3"):
        policy.completion_logits(params, prompts, out.tokens[:, :2])


def test_grpo_on_the_tabular_class_reaches_each_arms_own_closed_form(tmp_path):
    # exact_rev/loss -> the per-node reverse target, exact_fwd/loss -> the per-node forward
    # one, k1/reward -> the sequence reverse optimum, exact_fwd/ref_samples (the exact
    # per-position forward KL along reference samples) -> the sequence forward optimum;
    # each nearer its own target than the declared bound and farther from the others (the
    # nearest other is 0.026 away).
    from grpo_jax.configs import grpo as grpo_config  # noqa: PLC0415
    from grpo_jax.run import runner  # noqa: PLC0415

    beta, bound = 0.3, 0.015
    c = grpo_config.get_config("task=bandit")
    c.policy = "tabular"
    c.task = dict(name="fork", num_prompts=1, num_tokens=3, length=3, fork_depth=1, slip=0.2)
    c.grpo.update(num_prompts=1, group_size=256, one_token_draw="gumbel")
    c.loss.update(advantage_estimator="rloo", eps_low=0.2, eps_high=0.2)
    c.optim.lr = 0.02
    c.train.update(
        num_steps=1000, chunk_steps=1000, log_every_steps=1000, checkpoint_every_chunks=0,
        tensorboard=False, progress=False, skip_zero_grad=True,
    )  # fmt: skip
    c.mesh.data = 1
    arms = {
        "exact_rev/loss": "node_rev",
        "exact_fwd/loss": "node_fwd",
        "k1/reward": "seq_rev",
        "exact_fwd/ref_samples": "seq_fwd",
    }
    cells = [{"loss.kl_choice": a, "loss.beta": beta, "train.seed": 0} for a in arms]
    res = runner.run_population(c, cells, str(tmp_path), log=lambda *a: None)
    task = res.task
    r, ref = task.rewards_np(), task.reference_np()
    ref_tables = so.conditionals(ref, task.num_tokens, task.length)
    targets = {
        "node_rev": so.joint_from_tables(so.per_node_optimum(r, ref_tables, beta, "reverse")),
        "node_fwd": so.joint_from_tables(so.per_node_optimum(r, ref_tables, beta, "forward")),
        "seq_rev": so.sequence_optimum(r, ref, beta, "reverse"),
        "seq_fwd": so.sequence_optimum(r, ref, beta, "forward"),
    }
    for m, (arm, own) in enumerate(arms.items()):
        params = jax.tree.map(lambda x: np.asarray(x[m]), res.state.params)
        joint = so.joint_from_tables(res.setup.model.tables(params))
        tv = {k: 0.5 * float(np.abs(joint - v).sum()) for k, v in targets.items()}
        assert tv[own] < bound, (arm, tv)
        assert min(v for k, v in tv.items() if k != own) > bound, (arm, tv)


def test_targets_for_many_betas_equal_one_beta_at_a_time():
    task = fork.Fork(num_prompts=2, reward_kind="near", partial_reward=0.5)
    r, ref = task.rewards_np(), task.reference_np()
    ref_tables = so.conditionals(ref, 8, 3)
    betas = np.asarray([0.1, 0.5, 2.0])
    for d in ("forward", "reverse"):
        many = so.joint_from_tables(so.per_node_optimum(r, ref_tables, betas, d))
        one = [so.joint_from_tables(so.per_node_optimum(r, ref_tables, b, d)) for b in betas]
        np.testing.assert_allclose(many, np.stack(one), atol=1e-12)
        np.testing.assert_allclose(
            so.sequence_optimum(r, ref, betas, d),
            np.stack([so.sequence_optimum(r, ref, b, d) for b in betas]),
            atol=1e-12,
        )
    with pytest.raises(ValueError, match="1-D"):
        so.sequence_optimum(r, ref, betas[None], "reverse")


def test_stage0_predictions_a_01_reward_shows_no_sequence_level_gap():
    # With a 0/1 reward both sequence optima scale each reward level by a constant, so at
    # matched reward they coincide: forward - reverse is 0 at every fraction. A graded
    # reward (one token off earns 0.5) separates them.
    from grpo_jax.configs import sequence_predictions as cfg  # noqa: PLC0415
    from grpo_jax.study import sequence_predictions as sp  # noqa: PLC0415

    config = cfg.get_config("tiny")
    config.rewards = [dict(name="0/1", reward_kind="exact", partial_reward=0.0)] + list(
        config.rewards
    )
    rows = sp.predict(config)
    assert len(rows) == 4 and {r["reward"] for r in rows} == {"0/1", "one token off 0.5"}
    for r in rows:
        assert len(r["deltas"]["node"]) == len(config.fractions)
        if r["reward"] == "0/1":
            assert np.allclose(r["deltas"]["sequence"], 0.0, atol=1e-9)
            assert r["z0"] == pytest.approx(1 - r["ref_reward"], abs=1e-12)
        else:
            assert r["deltas"]["sequence"][1] > 1e-3  # forward keeps more off-target mass
    text = sp.markdown(rows, config)
    assert "one token off 0.5" in text and text.count("\n|") == 6  # header, rule, 4 rows


def test_study_records_of_a_sequence_population_are_its_exact_joint():
    # groups.final_logprobs (log space, a population) against the policy's own tables.
    from grpo_jax.models import policies  # noqa: PLC0415
    from grpo_jax.study import groups  # noqa: PLC0415

    task = fork.Fork(num_prompts=2, num_tokens=3, length=3)
    policy = policies.make("tabular", task)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    params = {
        k: jnp.stack([jax.random.normal(kk, v.shape) for kk in keys])
        for k, v in policy.init(None).items()
    }
    logp = groups.final_logprobs(policy, params)
    assert logp.shape == (2, 2 * 27)
    for m in range(2):
        member = jax.tree.map(lambda x: x[m], params)
        joint = so.joint_from_tables(policy.tables(member))  # [Np, 27]
        np.testing.assert_allclose(np.exp(logp[m]), 0.5 * joint.ravel(), atol=1e-6)
    vec = groups.task_vectors(task)
    assert vec["ref"].shape == (54,) and vec["ref"].sum() == pytest.approx(1.0)
    assert vec["zero"].sum() == 2 * (27 - 1)  # one rewarded completion per prompt (0/1)
