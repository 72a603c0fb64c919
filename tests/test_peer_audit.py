"""The peer audit: KL terms as frameworks write them (KLFormula), their exact expected
gradients against Monte Carlo and against TRL's own loss code, and the generated table."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from grpo_jax.configs import peer_audit as peer_config
from grpo_jax.core import audit, formula_audit
from grpo_jax.core.formula_audit import KLFormula
from grpo_jax.study.report import peer_audit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _token_rows(formulas):
    prob = audit.random_token_problem(jax.random.key(1), 5, old_scale=0.5)
    res = formula_audit.formula_token_audit(**prob, formulas=formulas)
    return {(r["name"], r["sampling"]): r for r in res["rows"]}


def test_formula_verdicts_are_the_known_facts():
    """Token level (docs/design.md, 'The math'): k3 in the loss descends the forward KL, the
    importance-weighted k3 the reverse KL on and off policy, k1 in the loss nothing on
    policy, k3 in the reward grad KL_rev - grad KL_fwd (mixed), k1 in the reward the reverse
    KL on policy but not off (its value is the sampler's)."""
    with jax.enable_x64(True):
        rows = _token_rows(
            {
                "k3": KLFormula("k3"),
                "k3_w": KLFormula("k3", weight="token"),
                "k1": KLFormula("k1"),
                "k3_r": KLFormula("k3", "reward"),
                "k1_r": KLFormula("k1", "reward"),
            }
        )
    want = {
        ("k3", "on"): "forward",
        ("k3", "off"): "biased",
        ("k3_w", "on"): "reverse",
        ("k3_w", "off"): "reverse",
        ("k1", "on"): "zero",
        ("k3_r", "on"): "mixed",
        ("k1_r", "on"): "reverse",
        ("k1_r", "off"): "biased",
    }
    for key, word in want.items():
        assert rows[key]["verdict"] == word, key
    assert rows[("k3_w", "on")]["norm_rev"] == pytest.approx(1.0, abs=1e-9)
    assert rows[("k1", "on")]["norm_rev"] < 1e-12


def test_verdict_words():
    rev, fwd = np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])
    assert formula_audit.verdict(rev, rev, fwd) == "reverse"
    assert formula_audit.verdict(fwd, rev, fwd) == "forward"
    assert formula_audit.verdict(1e-9 * rev, rev, fwd) == "zero"
    assert formula_audit.verdict(rev - 0.5 * fwd, rev, fwd) == "mixed"
    assert formula_audit.verdict(np.array([1.0, 0.0, 0.0]), rev, fwd) == "biased"


def test_formulas_agree_with_the_estimator_audit():
    """Where a KLFormula is an (estimator, placement, sampling) row of sequence_audit, the
    expected gradients are equal: weighted k3 off policy = k3/loss/off_is, and on policy
    = k2/loss/on (per sample, grad(w k3) = delta * score, k2's gradient); k1 in the reward and
    in returns-to-go on policy = k1/reward and k1/reward_to_go."""
    with jax.enable_x64(True):
        p = audit.random_sequence_problem(jax.random.key(2), 3, 2, old_scale=0.5)
        old = audit.sequence_audit(
            p["logits"],
            p["ref_logits"],
            p["old_logits"],
            estimators=("k1", "k2", "k3"),
            samplings=("on", "off_is"),
        )
        fs = {
            "k3_w": KLFormula("k3", weight="token"),
            "k1_r": KLFormula("k1", "reward"),
            "k1_rtg": KLFormula("k1", "reward_to_go"),
        }
        new = formula_audit.formula_sequence_audit(
            p["logits"], p["ref_logits"], p["old_logits"], fs
        )
    rows = {(r["name"], r["sampling"]): r["grad_mean"] for r in new["rows"]}
    pairs = [
        (("k3_w", "off"), dict(estimator="k3", placement="loss", sampling="off_is")),
        (("k3_w", "on"), dict(estimator="k2", placement="loss", sampling="on")),
        (("k1_r", "on"), dict(estimator="k1", placement="reward", sampling="on")),
        (("k1_rtg", "on"), dict(estimator="k1", placement="reward_to_go", sampling="on")),
    ]
    for key, labels in pairs:
        np.testing.assert_allclose(
            rows[key], audit.find_row(old, **labels)["grad_mean"], rtol=1e-9, atol=1e-12
        )


def _sample_sequences(key, tables, n):
    """Autoregressive samples ``[n, T]`` from tables ``[V**t, V]`` (independent of the
    enumeration: token by token with jax.random.categorical)."""
    vocab_size = tables[0].shape[-1]
    prefix = jnp.zeros((n,), jnp.int32)
    out = []
    for t, table in enumerate(tables):
        y = jax.random.categorical(jax.random.fold_in(key, t), table[prefix], axis=-1)
        out.append(y)
        prefix = prefix * vocab_size + y
    return jnp.stack(out, axis=-1).astype(jnp.int32)


def test_every_peer_row_matches_monte_carlo():
    """Each distinct peer formula's exact expected gradient (sequence level, V=3, T=2, on and
    off policy) against a Monte Carlo estimate from M = 250,000 sequences sampled token by
    token. The surrogate of a sample depends only on its sequence, so the mean gradient over
    the samples is the gradient of ``sum_y (count_y / M) L_y``: computed that way (cheap).
    E||err||^2 = grad_var / M (grad_var: the enumerated trace of the per-sample covariance);
    tolerance 5 sqrt(grad_var / M), and the error must be below a tenth of the gap to the
    nearest other formula's gradient where there is one (so the check can tell them apart)."""
    m = 250_000
    distinct = {}
    for r in peer_audit.PEERS:
        distinct.setdefault(r.kl, r.name)
    fs = {name: f for f, name in distinct.items()}
    with jax.enable_x64(True):
        p = audit.random_sequence_problem(jax.random.key(3), 3, 2, old_scale=0.5)
        exact = formula_audit.formula_sequence_audit(
            p["logits"], p["ref_logits"], p["old_logits"], fs
        )
        flat, unravel = ravel_pytree(list(p["logits"]))
        seqs = audit.enumerate_sequences(3, 2)
        ref = audit.sequence_logprobs(p["ref_logits"], seqs)
        old = audit.sequence_logprobs(p["old_logits"], seqs)
        freq = {}
        for s in formula_audit.FORMULA_SAMPLINGS:
            drawn = _sample_sequences(
                jax.random.key(4), p["logits" if s == "on" else "old_logits"], m
            )
            index = np.asarray(drawn[:, 0] * 3 + drawn[:, 1])
            freq[s] = jnp.asarray(np.bincount(index, minlength=9) / m)

        rows = exact["rows"]

        @jax.jit
        def mc_grads(x):
            def total(x, formula, s):
                logp = audit.sequence_logprobs(unravel(x), seqs)
                return jnp.sum(
                    freq[s] * formula_audit.formula_surrogates(logp, ref, old, formula, s)[0]
                )

            return [jax.grad(total)(x, fs[r["name"]], r["sampling"]) for r in rows]

        for row, g in zip(rows, mc_grads(flat)):
            err = np.linalg.norm(np.asarray(g) - row["grad_mean"])
            tol = 5.0 * np.sqrt(row["grad_var"] / m) + 1e-12
            assert err <= tol, (row["name"], row["sampling"], err, tol)
            gaps = [
                np.linalg.norm(o["grad_mean"] - row["grad_mean"])
                for o in rows
                if o["sampling"] == row["sampling"] and o["name"] != row["name"]
            ]
            gaps = [x for x in gaps if x > 1e-9]
            assert not gaps or err < 0.1 * min(gaps), (row["name"], err, min(gaps))


def test_trl_rows_match_trls_own_loss():
    """TRL 1.16.0's GRPOTrainer._compute_loss (called with a stand-in trainer that returns
    our log-probs; advantages 0, so only beta * KL is left) has the gradient with respect to
    the sampled tokens' log-probs of our trl_grpo, trl_grpo_nocorr and trl_grpo_seq rows
    (loss_type "grpo": a per-sequence token mean, then a mean over sequences)."""
    torch = pytest.importorskip("torch", reason="torch is in the bench extra, not in test")
    pytest.importorskip("trl", reason="trl is in the bench extra, not in test")
    import types  # pylint: disable=import-outside-toplevel
    from collections import defaultdict  # pylint: disable=import-outside-toplevel

    from trl.trainer.grpo_trainer import GRPOTrainer  # pylint: disable=import-outside-toplevel

    b, t = 4, 3
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(5), size=(b, t))[..., 0])
    old = logp + 0.3 * rng.normal(size=(b, t))
    ref = logp + 0.5 * rng.normal(size=(b, t))

    class _Accelerator:
        num_processes = 1

        def gather(self, x):
            return x

        gather_for_metrics = gather

        def reduce(self, x, reduction="sum"):
            del reduction
            return x

    def trl_grad(level, bias_correction):
        lp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
        trainer = types.SimpleNamespace(
            aux_loss_enabled=False,
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            importance_sampling_level=level,
            beta=1.0,
            loss_type="grpo",
            epsilon_low=0.2,
            epsilon_high=0.2,
            use_vllm=False,
            _entropy_bonus_enabled=False,
            current_gradient_accumulation_steps=1,
            _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
            accelerator=_Accelerator(),
            model=types.SimpleNamespace(training=True),
            args=types.SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None),
        )
        trainer._get_per_token_logps_and_entropies = lambda *a, **k: (lp, torch.zeros(b, t), None)
        inputs = dict(
            prompt_ids=torch.zeros(b, 1, dtype=torch.long),
            prompt_mask=torch.ones(b, 1),
            completion_ids=torch.zeros(b, t, dtype=torch.long),
            completion_mask=torch.ones(b, t),
            advantages=torch.zeros(b),
            old_per_token_logps=torch.tensor(old),
            ref_per_token_logps=torch.tensor(ref),
        )
        loss = GRPOTrainer._compute_loss(trainer, None, inputs)  # pylint: disable=protected-access
        loss.backward()
        return float(loss.detach()), lp.grad.numpy()

    cases = {
        "trl_grpo": ("token", True),
        "trl_grpo_nocorr": ("token", False),
        "trl_grpo_seq": ("sequence", True),
    }
    rows = {r.name: r.kl for r in peer_audit.PEERS}
    with jax.enable_x64(True):
        for name, (level, corr) in cases.items():
            want_loss, want_grad = trl_grad(level, corr)

            def ours(lp, formula=rows[name]):
                per_seq = formula_audit.formula_surrogates(
                    lp, jnp.asarray(ref), jnp.asarray(old), formula, "off"
                )[0]
                return jnp.mean(per_seq / t)  # TRL "grpo": token mean, then sequence mean

            loss, grad = jax.value_and_grad(ours)(jnp.asarray(logp))
            assert float(loss) == pytest.approx(want_loss, rel=1e-10), name
            np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12, err_msg=name)


def test_weight_modes_and_clamp_after_weight():
    """Per sample: ``token_self`` has value 1 and the score's gradient whatever the sampler;
    ``clamp_value_after_weight`` clips ``w * k3`` (zero gradient past the clamp) and detaches
    the weight where the log-ratio clamp bites; the default clips k3 before the weight."""
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    ref = jnp.array([[-1.2, -0.1, -0.4]])
    old = jnp.array([[-0.7, -2.5, -0.5]])
    f = lambda formula, s="off": jax.grad(
        lambda lp: formula_audit.formula_surrogates(lp, ref, old, formula, s)[0].sum()
    )(logp)
    d = logp - ref
    k3 = jnp.expm1(-d) + d
    # token_self: gradient of k3 * exp(logp - sg(logp)) = k3 + k3' = delta, any sampler.
    np.testing.assert_allclose(f(KLFormula("k3", weight="token_self")), d, rtol=1e-6)
    # token: w (k3 + k3') = w * delta with w = exp(logp - old).
    np.testing.assert_allclose(
        f(KLFormula("k3", weight="token")), jnp.exp(logp - old) * d, rtol=1e-6
    )
    # Clamp after the weight: token 1 (w k3 = exp(0.5) * 4.8 > 3) is clipped, zero gradient.
    after = KLFormula("k3", clamp_value=3.0, weight="token", clamp_value_after_weight=True)
    g = np.asarray(f(after))
    assert float(jnp.exp(logp - old)[0, 1] * k3[0, 1]) > 3.0 and g[0, 1] == 0.0
    np.testing.assert_allclose(g[0, [0, 2]], (jnp.exp(logp - old) * d)[0, [0, 2]], rtol=1e-6)
    value = formula_audit.formula_surrogates(logp, ref, old, after, "off")[2]
    want = float(jnp.sum(jnp.clip(jnp.exp(logp - old) * k3, -3.0, 3.0)))
    assert float(value[0]) == pytest.approx(want, rel=1e-6)
    # Log-ratio clamp 1.0 bites on token 1: value clip(delta) and detached weight, so the
    # gradient there is zero; elsewhere w * delta.
    lr = KLFormula(
        "k3",
        clamp_log_ratio=1.0,
        clamp_value=100.0,
        weight="token",
        clamp_value_after_weight=True,
    )
    g = np.asarray(f(lr))
    assert g[0, 1] == 0.0
    np.testing.assert_allclose(g[0, [0, 2]], (jnp.exp(logp - old) * d)[0, [0, 2]], rtol=1e-6)


def test_formula_validation():
    with pytest.raises(ValueError, match="valid names"):
        KLFormula("k4")
    with pytest.raises(ValueError, match="placement 'loss' only"):
        KLFormula("k3", "reward", weight="token")
    with pytest.raises(ValueError, match="reward_to_go"):
        KLFormula("k1", "reward_to_go", ratio="sequence")
    with pytest.raises(ValueError, match="needs clamp_value"):
        KLFormula("k3", clamp_value_after_weight=True)
    with pytest.raises(ValueError, match="needs the old policy"):
        formula_audit.formula_token_audit(jnp.zeros(3), jnp.ones(3), None, {"k1": KLFormula("k1")})


def test_peer_rows_and_table():
    """Every row names a version, a file with lines and a formula; the results table has a
    verdict word per level for each row and sampling (a small config, two rows)."""
    names = [r.name for r in peer_audit.PEERS]
    assert len(set(names)) == len(names)
    for r in peer_audit.PEERS:
        assert r.framework and ":" in r.source and r.formula, r.name
    config = peer_config.get_config()
    config.token.vocab_size = 3
    config.sequence.length = 2
    rows = peer_audit.PEERS[:2]
    with jax.enable_x64(True):
        results = peer_audit.run(config, rows)
    table = peer_audit.results_table(results, rows).splitlines()
    assert len(table) == 2 + 2 * len(rows)
    for line in table[2:]:
        words = [c.strip("* ") for c in line.split("|") if "**" in c]
        assert len(words) == 2 and all(w in formula_audit.VERDICTS for w in words), line


def test_readme_section_is_the_generated_file():
    """The README's peer-audit section is docs/results/peer_audit.md (written by
    experiments/peer_audit.py --publish), and its figure exists."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert peer_audit.README_BEGIN in text and peer_audit.README_END in text
    block = text.split(peer_audit.README_BEGIN, 1)[1].split(peer_audit.README_END, 1)[0]
    generated = open(os.path.join(ROOT, "docs/results/peer_audit.md"), encoding="utf-8").read()
    assert block.strip() == generated.strip()
    assert os.path.exists(os.path.join(ROOT, "docs/results/peer_audit_bias.png"))
