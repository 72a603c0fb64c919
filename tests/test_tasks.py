"""Tasks: rewards and mode labels on hand-written cases, declared modality of the data,
exact tables, closed-form bandit optima."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.configs import tasks as task_configs
from grpo_jax import tasks
from grpo_jax.tasks import bandit as bandit_lib, format as fmt

EQ, PLUS, DOT = fmt.EQ, fmt.PLUS, fmt.DOT


def rbg(seed):
    return jax.random.key(seed, impl="rbg")  # cheap to compile on CPU


def i32(x):
    return jnp.asarray(x, jnp.int32)


# ------------------------------------------------------------------------------ registry


def test_registry_and_validation():
    assert tasks.TASKS == ("bandit", "fork", "arithmetic", "format")
    with pytest.raises(ValueError, match="valid tasks"):
        tasks.make("nope")
    with pytest.raises(ValueError, match="reward_kind"):
        tasks.make("bandit", reward_kind="bogus")
    with pytest.raises(ValueError, match="outside"):
        tasks.make("bandit", num_modes=3, separation=10.0)  # centres off the vocabulary
    with pytest.raises(ValueError, match="valid answers"):
        tasks.make("arithmetic", n_min=1, num_modes=4)  # N=1 has 2 valid answers
    for name in ("arithmetic", "format"):
        for bad in (-0.1, 1.0):  # e = 1 would leave no correct answer, hence no mode
            with pytest.raises(ValueError, match="error_mass"):
                tasks.make(name, error_mass=bad)
    with pytest.raises(ValueError, match="valid"):
        task_configs.task_config("bandit", sepparation=2.0)
    # Lists from configs become tuples; equal tasks hash equal (static jit arguments).
    a = tasks.make("bandit", num_modes=2, weights=[1.0, 3.0])
    b = tasks.make("bandit", num_modes=2, weights=(1.0, 3.0))
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize("name", list(task_configs.PRESETS))
def test_presets_build(name):
    cfg = task_configs.task_config(name)
    task = task_configs.make_task(cfg)
    assert task.name == cfg.name
    shares = np.asarray(task.reference_mode_shares())
    assert shares.shape == (task.num_modes,) and shares.sum() <= 1 + 1e-6


def test_interface_attributes_and_jit():
    for name in tasks.TASKS:
        task = tasks.make(name)
        assert task.bos_id in task.special_ids
        assert set(task.ordinary_ids).isdisjoint(task.special_ids)
        assert len(task.ordinary_ids) + len(task.special_ids) == task.vocab_size
        p = task.all_prompts()
        assert p.shape[1] == task.prompt_len and bool(jnp.all(p[:, 0] == task.bos_id))
        np.testing.assert_array_equal(task.prompt_index(p), np.arange(p.shape[0]))

    task = tasks.make("arithmetic")

    @jax.jit
    def f(key):
        prompts = task.sample_prompts(key, 4)
        comps = task.sample_reference(key, prompts)
        return task.reward(prompts, comps), task.mode_labels(prompts, comps)

    r, lab = jax.vmap(f)(jax.random.split(rbg(0), 3))
    assert r.shape == (3, 4) and lab.shape == (3, 4)
    with pytest.raises(ValueError, match="completions"):
        task.reward(i32([[10, 1, 2]]), i32([[1, 2, 3]]))


# ------------------------------------------------------------------------------ bandit


def test_bandit_rewards_hand_written():
    prompts = jnp.full((6, 1), 64, jnp.int32)
    t = tasks.make("bandit", targets=(5, 9))
    np.testing.assert_array_equal(
        t.reward(prompts, i32([[5], [6], [9], [0], [63], [64]])), [1, 0, 1, 0, 0, 0]
    )
    t = tasks.make("bandit", reward_kind="distance", targets=(10,), reward_width=4.0)
    np.testing.assert_allclose(
        t.reward(prompts, i32([[10], [12], [8], [14], [20], [64]])), [1, 0.5, 0.5, 0, 0, 0]
    )
    t = tasks.make("bandit", reward_kind="distance", targets=(10, 20), reward_width=4.0)
    np.testing.assert_allclose(t.reward(prompts[:3], i32([[11], [19], [15]])), [0.75, 0.75, 0])


def test_bandit_modes_hand_written():
    # centres 31.5 -+ 5 = 26.5, 36.5; radius 3 sigma = 6.
    t = tasks.make("bandit", num_modes=2, sigma=2.0, separation=5.0)
    assert t.centres == (26.5, 36.5)
    tokens = [26, 31, 32, 21, 20, 42, 43, 64]
    want = [0, 0, 1, 0, -1, 1, -1, -1]
    got = t.mode_labels(jnp.full((8, 1), 64, jnp.int32), i32(tokens)[:, None])
    np.testing.assert_array_equal(got, want)
    assert t.target_tokens == (36,)  # default target: centre of the last mode, rounded


def test_bandit_reference_distribution():
    t = tasks.make("bandit", num_modes=2, sigma=3.0, separation=8.0, weights=(0.8, 0.2))
    p = np.asarray(t.reference_probs(), np.float64)
    assert p.shape == (65,) and p[64] == 0 and abs(p.sum() - 1) < 1e-6
    y = np.arange(64)
    comps = [np.exp(-0.5 * ((y - c) / 3.0) ** 2) for c in t.centres]
    want = 0.8 * comps[0] / comps[0].sum() + 0.2 * comps[1] / comps[1].sum()
    np.testing.assert_allclose(p[:64], want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(t.reference_mode_shares(), [0.8, 0.2], atol=3e-3)
    ent = t.reference_entropy()
    np.testing.assert_allclose(ent, [-(want[want > 0] * np.log(want[want > 0])).sum()], rtol=1e-6)


def test_bandit_optima():
    t = tasks.make(
        "bandit", num_modes=2, sigma=3.0, separation=8.0, reward_kind="distance", reward_width=10.0
    )
    p = np.asarray(t.reference_probs(), np.float64)
    r = np.asarray(t.reward_vector(), np.float64)
    optimum = jax.jit(t.optimum, static_argnums=1)
    objective = jax.jit(t.objective, static_argnums=2)
    for beta in (0.05, 0.5):
        rev = np.asarray(optimum(beta, "reverse"), np.float64)
        want = p * np.exp(r / beta)
        np.testing.assert_allclose(rev, want / want.sum(), rtol=1e-4, atol=1e-10)
        fwd = np.asarray(optimum(beta, "forward"), np.float64)
        assert abs(fwd.sum() - 1) < 1e-5 and fwd[64] == 0
        # Stationarity: beta * pi_ref / pi* + R is one constant lam > max R on the support.
        s = p > 1e-12
        lam = beta * p[s] / fwd[s] + r[s]
        np.testing.assert_allclose(lam, lam.mean(), rtol=1e-4)
        assert lam.mean() > r[s].max()
        # Optimality: random perturbations never do better (both objectives are concave).
        rng = np.random.default_rng(0)
        for direction, opt in (("reverse", rev), ("forward", fwd)):
            best = float(objective(jnp.asarray(opt, jnp.float32), beta, direction))
            noise = np.exp(0.3 * rng.standard_normal((5, 65))) * opt[None, :]
            noise /= noise.sum(-1, keepdims=True)
            vals = jax.vmap(objective, in_axes=(0, None, None))(
                jnp.asarray(noise, jnp.float32), beta, direction
            )
            assert float(jnp.max(vals)) <= best + 1e-5
    # Large beta: the optimum is the reference.
    np.testing.assert_allclose(optimum(1e4, "forward"), p, atol=1e-4)
    np.testing.assert_allclose(optimum(1e4, "reverse"), p, atol=1e-4)
    with pytest.raises(ValueError, match="direction"):
        t.optimum(0.1, "sideways")


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_bandit_optimum_closed_forms(direction):
    """tasks.bandit_optimum (NumPy float64, vectorised over beta): the closed forms."""
    rewards = np.asarray([0.0, 0.3, 1.0, 1.0, 0.5])
    ref = np.asarray([0.4, 0.1, 0.2, 0.05, 0.25])
    betas = np.asarray([0.02, 0.1, 1.0, 1e4])
    pi = tasks.bandit_optimum(rewards, ref, betas, direction)
    assert pi.shape == (4, 5) and pi.dtype == np.float64
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-12)
    for b, p in zip(betas, pi):
        if direction == "reverse":
            want = ref * np.exp(rewards / b)
            np.testing.assert_allclose(p, want / want.sum(), rtol=1e-10)
        else:
            # Stationarity: beta * ref / pi + R is one constant lam > max R.
            lam = b * ref / p + rewards
            np.testing.assert_allclose(lam, lam.mean(), rtol=1e-9)
            assert lam.mean() > rewards.max()
        # Both optima keep the reference's ratio between arms of equal reward.
        assert p[2] / p[3] == pytest.approx(ref[2] / ref[3], rel=1e-9)
    np.testing.assert_allclose(pi[-1], ref, atol=1e-4)  # large beta: the reference
    # Arms of reference probability 0 stay at 0 (the bandit's special token).
    padded = tasks.bandit_optimum(np.append(rewards, 2.0), np.append(ref, 0.0), betas, direction)
    np.testing.assert_array_equal(padded[:, -1], 0.0)
    np.testing.assert_allclose(padded[:, :-1], pi, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="direction"):
        tasks.bandit_optimum(rewards, ref, betas, "sideways")


def test_bandit_optimum_is_the_one_implementation():
    """Bandit.optimum is bandit_optimum on the task's rewards and reference, under jit and
    vmap over beta."""
    assert tasks.bandit_optimum is bandit_lib.bandit_optimum
    t = tasks.make("bandit", num_modes=2, sigma=3.0, separation=8.0)
    ref = np.asarray(t.table()["answer_probs"][0])
    rewards = np.asarray(t.reward_vector(), np.float64)[:64]
    betas = np.asarray([0.05, 0.5])
    for direction in ("reverse", "forward"):
        want = tasks.bandit_optimum(rewards, ref, betas, direction)
        got = jax.jit(jax.vmap(t.optimum, in_axes=(0, None)), static_argnums=1)(
            jnp.asarray(betas, jnp.float32), direction
        )
        assert got.shape == (2, 65) and got.dtype == jnp.float32
        np.testing.assert_allclose(got[:, :64], want, rtol=1e-6, atol=1e-12)
        assert np.all(np.asarray(got[:, 64]) == 0.0)


# ------------------------------------------------------------------------------ arithmetic


def test_arithmetic_rewards_and_modes_hand_written():
    t = tasks.make("arithmetic", num_modes=4, preferred_mode=3, preference_bonus=1.0)
    # N = 12: valid a in [3, 9]; anchors 3, 5, 7, 9.
    comps = [[3, 9], [4, 8], [6, 6], [8, 4], [9, 3], [4, 9], [10, 2], [2, 10]]
    prompts = jnp.tile(i32([[10, 1, 2]]), (len(comps), 1))
    np.testing.assert_array_equal(t.mode_labels(prompts, i32(comps)), [0, 0, 1, 2, 3, -1, -1, -1])
    np.testing.assert_allclose(t.reward(prompts, i32(comps)), [1, 1, 1, 1, 2, 0, 0, 0])
    # The reference's slips for N = 12 (second digit one too many, or one too few when it is
    # 9): wrong, so no mode and reward 0, even next to the preferred anchor 9.
    slips = i32([[3, 8], [5, 8], [9, 4], [4, 9]])
    np.testing.assert_array_equal(t.mode_labels(prompts[:4], slips), [-1] * 4)
    np.testing.assert_array_equal(t.reward(prompts[:4], slips), [0] * 4)
    # N = 5: a in [0, 5]; anchors round(k 5/3) = 0, 2, 3, 5.
    got = t.mode_labels(jnp.tile(i32([[10, 0, 5]]), (3, 1)), i32([[1, 4], [2, 3], [4, 1]]))
    np.testing.assert_array_equal(got, [0, 1, 2])


def _binary_entropy(e):
    return -(e * math.log(e) + (1 - e) * math.log(1 - e))


def test_arithmetic_reference_tables():
    # The reference picks a first digit from the dial, then slips the second digit by one
    # with probability e = error_mass (0.4): the first-digit distribution (the modes) is the
    # dial's, position 1 carries exactly the binary entropy h(e) (each first digit has one
    # right and one slipped second digit), and each answer's mass is split 1 - e : e.
    e = tasks.make("arithmetic").error_mass
    assert e == 0.4
    h = _binary_entropy(e)
    canon = tasks.make("arithmetic", num_modes=1)
    ans, probs = canon.reference_answers()
    i = 12 - canon.n_min
    got = {
        tuple(int(v) for v in ans[i, k]): float(probs[i, k])
        for k in range(ans.shape[1])
        if probs[i, k] > 0
    }
    assert got == pytest.approx({(6, 6): 1 - e, (6, 7): e})  # canonical pair and its slip
    np.testing.assert_allclose(canon.reference_entropy(), [0, h], atol=1e-12)
    np.testing.assert_allclose(canon.reference_mode_shares(), [1 - e], rtol=1e-6)
    # error_mass = 0 gives back the all-correct reference (at the reward ceiling).
    exact = tasks.make("arithmetic", num_modes=1, error_mass=0.0)
    ans0, probs0 = exact.reference_answers()
    k = int(jnp.argmax(probs0[i]))
    assert float(probs0[i, k]) == 1.0 and list(ans0[i, k]) == [6, 6]
    np.testing.assert_allclose(exact.reference_entropy(), [0, 0], atol=1e-12)

    uniform = tasks.make("arithmetic", background=1.0)
    m = [min(9, n) - max(0, n - 9) + 1 for n in range(uniform.n_min, uniform.n_max + 1)]
    np.testing.assert_allclose(uniform.reference_entropy(), [np.mean(np.log(m)), h], rtol=1e-9)
    four = tasks.make("arithmetic")
    np.testing.assert_allclose(four.reference_entropy(), [math.log(4), h], rtol=1e-9)
    np.testing.assert_allclose(four.reference_mode_shares(), [(1 - e) / 4] * 4, rtol=1e-6)
    stats = four.reference_stats()
    assert stats["num_modes"] == 4 and abs(stats["effective_modes"] - 4) < 1e-6


@pytest.mark.parametrize(
    "kwargs", [{}, dict(num_modes=1), dict(background=1.0), dict(weights=(0.85, 0.05, 0.05, 0.05))]
)
def test_arithmetic_slips_leave_the_dial_intact(kwargs):
    """The first-digit distribution and the relative mode shares are those of the slip-free
    reference; all slip mass is wrong (reward 0) and unlabelled."""
    t = tasks.make("arithmetic", **kwargs)
    t0 = tasks.make("arithmetic", error_mass=0.0, **kwargs)
    tab, tab0 = t.table(), t0.table()
    first = lambda tb: np.stack(
        [
            np.bincount(tb["answers"][i, :, 0], tb["answer_probs"][i], 10)
            for i in range(tb["answers"].shape[0])
        ]
    )
    np.testing.assert_allclose(first(tab), first(tab0), atol=1e-12)
    np.testing.assert_allclose(
        t.reference_mode_shares(),
        (1 - t.error_mass) * np.asarray(t0.reference_mode_shares()),
        atol=1e-6,
    )
    n, a, _ = tab["answers"].shape
    r = np.asarray(
        t.reward(
            jnp.asarray(np.repeat(tab["prompts"], a, 0)),
            jnp.asarray(tab["answers"].reshape(n * a, 2)),
        )
    ).reshape(n, a)
    wrong = (tab["answer_probs"] > 0) & (r == 0)
    assert np.all(tab["answer_modes"][wrong] == -1)
    np.testing.assert_allclose((tab["answer_probs"] * wrong).sum(-1), t.error_mass, atol=1e-12)


# ------------------------------------------------------------------------------ format


def test_format_rewards_and_modes_hand_written():
    prompts = jnp.tile(i32([[13, 3, 4, 8]]), (8, 1))  # s = 15 % 10 = 5, r = 7
    comps = i32(
        [
            [EQ, 5, DOT, DOT, DOT],  # direct, right
            [7, PLUS, 8, EQ, 5],  # worked, right
            [EQ, 4, DOT, DOT, DOT],  # direct, wrong
            [6, PLUS, 8, EQ, 5],  # worked, wrong intermediate
            [7, PLUS, 8, EQ, 4],  # worked, wrong answer
            [1, 2, 3, 4, 5],  # neither
            [EQ, 5, DOT, DOT, EQ],  # the reference's direct slip (malformed)
            [7, PLUS, 8, DOT, 5],
        ]
    )  # the reference's worked slip (malformed)
    strict = tasks.make("format")
    np.testing.assert_array_equal(strict.mode_labels(prompts, comps), [0, 1, 0, 1, 1, -1, -1, -1])
    np.testing.assert_array_equal(strict.reward(prompts, comps), [1, 1, 0, 0, 0, 0, 0, 0])
    lenient = tasks.make("format", strict=False)
    np.testing.assert_array_equal(lenient.reward(prompts, comps), [1, 1, 0, 1, 0, 0, 0, 0])
    # The table's four answers for this prompt: direct, worked and their slips.
    tab = strict.table()
    np.testing.assert_array_equal(tab["answers"][348], np.asarray(comps)[[0, 1, 6, 7]])
    np.testing.assert_array_equal(tab["answer_modes"][348], [0, 1, -1, -1])


def test_format_reference_tables():
    # Formats drawn 90/10, each slipped with probability e = error_mass (0.4). Position 0
    # picks the format (h(0.9)); the worked slip branches at position 3 (w_1 h(e)), the
    # direct slip at position 4 (w_0 h(e)); each mode keeps (1 - e) of its weight.
    t = tasks.make("format", format_weights=(0.9, 0.1))
    e = t.error_mass
    assert e == 0.4
    h, he = _binary_entropy(0.9), _binary_entropy(e)
    np.testing.assert_allclose(t.reference_entropy(), [h, 0, 0, 0.1 * he, 0.9 * he], atol=1e-12)
    np.testing.assert_allclose(t.reference_mode_shares(), [0.9 * (1 - e), 0.1 * (1 - e)], rtol=1e-6)
    np.testing.assert_allclose(
        t.table()["answer_probs"][0], [0.9 * (1 - e), 0.1 * (1 - e), 0.9 * e, 0.1 * e], atol=1e-12
    )
    # error_mass = 0 gives back the all-well-formed reference (at the reward ceiling).
    t0 = tasks.make("format", format_weights=(0.9, 0.1), error_mass=0.0)
    np.testing.assert_allclose(t0.reference_entropy(), [h, 0, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(t0.reference_mode_shares(), [0.9, 0.1], rtol=1e-6)


# ------------------------------------------------------------------------------ all tasks


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("bandit", dict(num_modes=3, sigma=3.0, separation=6.0, weights=(0.5, 0.3, 0.2))),
        ("arithmetic", dict(weights=(0.85, 0.05, 0.05, 0.05))),
        ("format", dict(format_weights=(0.9, 0.1))),
        ("fork", dict(num_branches=4, fork_depth=1, slip=0.1)),
    ],
)
def test_reference_data_has_declared_modality(name, kwargs):
    task = tasks.make(name, **kwargs)
    n = 20000
    tab = task.table()
    n_p, n_a, t_len = tab["answers"].shape

    @jax.jit
    def run(key):
        key_p, key_r = jax.random.split(key)
        prompts = task.sample_prompts(key_p, n)
        comps = task.sample_reference(key_r, prompts)
        labels = task.mode_labels(prompts, comps)
        shares = jnp.mean(labels[:, None] == jnp.arange(task.num_modes)[None, :], axis=0)
        table_labels = task.mode_labels(
            jnp.repeat(jnp.asarray(tab["prompts"]), n_a, axis=0),
            jnp.asarray(tab["answers"]).reshape(-1, t_len),
        )
        return comps, shares, task.reward(prompts, comps), labels, table_labels

    comps, shares, rewards, labels, table_labels = run(rbg(1))
    assert comps.shape == (n, task.completion_len) and comps.dtype == jnp.int32
    assert not np.isin(np.asarray(comps), task.special_ids).any()
    ref = np.asarray(task.reference_mode_shares())
    np.testing.assert_allclose(shares, ref, atol=0.015)  # ~4 standard errors at n=20000
    if name not in ("bandit", "fork"):
        # Every labelled reference answer is correct; the unlabelled ones are the declared
        # slips (wrong, reward 0), drawn at the rate error_mass. (Before the slips existed the
        # reference answered correctly always, i.e. sat at its reward ceiling.)
        rewards, labels = np.asarray(rewards), np.asarray(labels)
        assert np.all(rewards[labels >= 0] >= 1.0) and np.all(rewards[labels < 0] == 0.0)
        assert abs(np.mean(labels < 0) - task.error_mass) < 0.015  # ~4 s.e. at n=20000
    # The table's mode column agrees with mode_labels on every answer with mass.
    live = tab["answer_probs"].reshape(-1) > 0
    np.testing.assert_array_equal(
        np.asarray(table_labels)[live], tab["answer_modes"].reshape(-1)[live]
    )


def _preset_cases():
    cases = [
        (f"preset:{name}", task_configs.make_task(task_configs.task_config(name)))
        for name in task_configs.PRESETS
    ]
    cases += [(f"default:{name}", tasks.make(name)) for name in tasks.TASKS]
    # A preference bonus raises the ceiling as well as the reference's reward.
    cases.append(
        (
            "arithmetic preferring mode 3",
            tasks.make("arithmetic", preferred_mode=3, preference_bonus=1.0),
        )
    )
    return cases


_CASES = _preset_cases()


@pytest.mark.parametrize("label,task", _CASES, ids=[label for label, _ in _CASES])
def test_every_reference_starts_below_its_reward_ceiling(label, task):
    """A reference at its reward ceiling gives GRPO groups of equal rewards (zero advantages):
    training would measure drift, not the regulariser. From the exact tables:
    E[R] = sum_x w_x sum_a p(a | x) R(x, a) against the ceiling sum_x w_x max_y R(x, y)."""
    tab = task.table()
    n, a, t_len = tab["answers"].shape
    prompts = np.repeat(tab["prompts"], a, axis=0)
    r = np.asarray(
        task.reward(jnp.asarray(prompts), jnp.asarray(tab["answers"].reshape(n * a, t_len))),
        np.float64,
    ).reshape(n, a)
    w = tab["prompt_probs"]
    ref_reward = float(w @ (tab["answer_probs"] * r).sum(-1))
    ceiling = float(w @ r.max(-1))  # the table lists a best answer for every prompt:
    if task.num_completions() <= 1000:  # checked against every completion where enumerable
        comps = np.asarray(task.enumerate_completions())
        c = comps.shape[0]
        full = np.asarray(
            task.reward(
                jnp.asarray(np.repeat(tab["prompts"], c, axis=0)),
                jnp.asarray(np.tile(comps, (n, 1))),
            )
        ).reshape(n, c)
        assert ceiling == pytest.approx(float(w @ full.max(-1)), abs=1e-6)
    else:  # format: rewards are 0/1 and both correct answers are listed
        assert task.name == "format" and ceiling == pytest.approx(1.0)
    assert ceiling > 0
    assert ref_reward <= 0.7 * ceiling, (label, ref_reward, ceiling)  # room to improve
    if task.name == "fork":  # 0/1 rewards: the reference earns 1 - Z0
        assert ref_reward == pytest.approx(1 - task.zero_reward_mass(), abs=1e-6)
    elif task.name != "bandit":  # the declared design: 1 - error_mass of the ceiling, or less
        assert ref_reward <= (1 - task.error_mass) * ceiling + 1e-9


def test_enumerate_completions():
    t = tasks.make("arithmetic")
    c = np.asarray(t.enumerate_completions())
    assert c.shape == (100, 2) and len({tuple(r) for r in c}) == 100 and c.max() == 9
    assert tasks.make("bandit").enumerate_completions().shape == (64, 1)
    with pytest.raises(ValueError, match="enumerable"):
        tasks.make("format").enumerate_completions(max_count=1000)
