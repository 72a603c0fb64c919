"""The study's records: one per population member, with the closed-form bandit optima."""

import numpy as np
import pytest

from grpo_jax import study, tasks


def test_records():
    task = tasks.make("bandit", num_tokens=8, num_modes=2, sigma=0.7, separation=4.0)
    s, steps, a = 2, 5, 8
    logp = np.log(np.full((s, 1, a), 1.0 / a))
    hist = {k: np.zeros((s, steps)) for k in ("reward_mean", "exact_kl_rev", "exact_kl_fwd",
                                              "entropy", "nonfinite")}
    hist["mode_shares"] = np.zeros((s, steps, 2))
    ev = {k: np.zeros(s) for k in ("reward", "exact_kl_rev", "exact_kl_fwd", "entropy",
                                   "mode_coverage")}
    ev.update(pass_at_k=np.zeros((s, 2)), mode_shares=np.zeros((s, 2)),
              ref_mode_shares=np.full((s, 2), 0.5), logp=logp, ref_logp=logp,
              eval_method="exact")
    cells = [{"loss.kl_choice": "exact_fwd/loss", "loss.beta": 0.5, "train.seed": 0},
             {"loss.kl_choice": "k1/loss", "loss.beta": 0.0, "train.seed": 1}]
    recs = study.make_records(task, hist, ev, cells, task_label="b",
                                 modality="m", multimodal=True, ks=(1, 2), max_points=3)
    assert [r["kl_choice"] for r in recs] == ["exact_fwd/loss", "none"]
    assert recs[0]["history"]["step"] == [1, 3, 5]
    b = recs[0]["bandit"]
    assert len(b["final_policy"]) == a and abs(sum(b["optimum_forward"]) - 1) < 1e-6
    # Reverse optimum by hand: pi ∝ ref exp(R / beta).
    r = np.asarray(task.reward_vector())[:a]
    want = np.exp(r / 0.5) / np.exp(r / 0.5).sum()
    np.testing.assert_allclose(b["optimum_reverse"], want, rtol=1e-6)
    with pytest.raises(KeyError):
        study.make_records(task, {}, ev, cells, task_label="b",
                              modality="m", multimodal=True, ks=(1, 2))
