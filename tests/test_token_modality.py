"""The premise measurement's statistics (`grpo_jax.study.token_modality`) and its report, on
hand-made distributions and records whose answers are known (no model is loaded)."""

import numpy as np
import pytest

from grpo_jax.configs import token_modality as tm_config
from grpo_jax.study import token_modality as tm
from grpo_jax.study.report import token_modality as tm_report


def _p(entries, size=100):
    p = np.zeros(size)
    for i, v in entries.items():
        p[i] = v
    return p


def test_answers_above_counts_numbers_not_runs_of_neighbours():
    # 41 and 42 are adjacent integers but two answers; 0.049 < 0.1 x 0.5 is not counted,
    # 0.05 = 0.1 x 0.5 is (>=).
    p = _p({41: 0.5, 42: 0.3, 7: 0.05, 90: 0.049, 3: 0.001})
    assert tm.answers_above(p, 0.1) == 3
    assert tm.answers_above(p, 0.5) == 2  # 0.3 >= 0.25
    assert tm.answers_above(p, 1.0) == 1
    # Scale-free: the un-renormalised and the renormalised p give the same count.
    assert tm.answers_above(p / p.sum(), 0.1) == 3
    assert tm.answers_above(np.full(100, 0.01), 0.1) == 100


def test_zero_reward_mass_counts_the_non_number_replies():
    # 0.6 on numbers, 0.4 on everything else; 0.3 on the valid numbers.
    p = _p({10: 0.2, 12: 0.1, 11: 0.25, 13: 0.05})
    valid = np.zeros(100, bool)
    valid[[10, 12, 14]] = True
    assert tm.zero_reward_mass(p, valid) == pytest.approx(0.7)
    rec = tm._answer_record(p, valid, tm_config.get_config())  # pylint: disable=protected-access
    assert rec["z0"] == pytest.approx(0.7)
    assert rec["canonical_mass"] == pytest.approx(0.6)
    assert rec["valid_share"] == pytest.approx(0.5)  # within the numbers: 0.3 / 0.6
    assert rec["answers_above"] == 4  # all >= 0.1 x 0.25
    assert rec["n90"] == 3  # 0.25 + 0.2 + 0.1 = 0.55 >= 0.9 x 0.6
    assert rec["top_numbers"][:2] == [11, 10]
    assert "modes" not in rec


def test_top_entropy_stats_take_the_highest_entropy_tenth():
    rng = np.random.default_rng(0)
    h = rng.permutation(np.arange(25.0))  # ceil(2.5) = 3 positions: h = 24, 23, 22
    top1 = np.where(h >= 22, 0.2, 0.9)
    ratio21 = np.where(h == 24, 0.8, 0.1)
    within10x = np.where(h >= 22, h - 20, 1.0)  # 4, 3, 2 on the top three
    t = tm.top_entropy_stats(h, top1, ratio21, within10x, 0.1, 0.5)
    assert t["positions"] == 3
    assert t["H_mean"] == pytest.approx(23.0)
    assert t["H_min"] == pytest.approx(22.0)
    assert t["top1_mean"] == pytest.approx(0.2)
    assert t["ratio_gt"] == pytest.approx(1 / 3)
    assert t["within10x_mean"] == pytest.approx(3.0)
    # Exactly a tenth of 20, and at least one position of a few.
    assert tm.top_entropy_stats(np.arange(20.0), *[np.zeros(20)] * 3, 0.1, 0.5)["positions"] == 2
    assert tm.top_entropy_stats([0.5, 2.0], [0.7, 0.4], [0, 1], [1, 2], 0.1, 0.5) == {
        "positions": 1,
        "H_mean": 2.0,
        "H_min": 2.0,
        "top1_mean": 0.4,
        "ratio_gt": 1.0,
        "within10x_mean": 2.0,
    }


def _records():
    """Two arithmetic prompts (10 positions) and one chat prompt, statistics known."""
    config = tm_config.get_config()
    valid = np.zeros(100, bool)
    valid[5] = True
    out = []
    for i, p in enumerate([_p({5: 0.6, 6: 0.3}), _p({5: 0.1, 50: 0.1, 51: 0.1, 60: 0.008})]):
        h = np.arange(5.0) + 5 * i  # 0..9 over both prompts: the decile is h = 9
        rec = {
            "kind": "arithmetic",
            "text": f"What is {i} + 5?",
            "prefix": f"{i} + 5 = ",
            "entropy": h.tolist(),
            "top1": (1.0 - h / 10).tolist(),
            "ratio21": (h / 10).tolist(),
            "within10x": (h + 1).tolist(),
            "seq_logp": [-1.0, -2.0],
            "ended": [True, False],
            "samples": ["5", "6"],
        }
        rec.update(tm._answer_record(p, valid, config))  # pylint: disable=protected-access
        out.append(rec)
    chat = dict(out[0], kind="chat", prefix="", samples=["hi"])
    for f in ("canonical_mass", "n90", "answers_above", "z0", "valid_share"):
        chat.pop(f)
    chat.pop("top_numbers")
    return out + [chat], config


def test_summarize_reports_z0_answers_above_and_the_decile():
    records, config = _records()
    table = tm.summarize(records, config)
    a = table["arithmetic"]
    assert a["positions"] == 10
    assert a["H_mean"] == pytest.approx(4.5)
    assert a["top"]["positions"] == 1
    assert a["top"]["H_mean"] == pytest.approx(9.0)
    assert a["top"]["top1_mean"] == pytest.approx(0.1)
    assert a["top"]["ratio_gt"] == 1.0 and a["ratio_gt"] == pytest.approx(0.4)
    assert a["top"]["within10x_mean"] == pytest.approx(10.0)
    assert a["z0"] == pytest.approx((0.4 + 0.9) / 2)
    assert a["above_mean"] == pytest.approx((2 + 3) / 2)  # 0.008 < 0.1 x 0.1
    assert a["valid_share"] == pytest.approx((0.6 / 0.9 + 0.1 / 0.308) / 2)
    assert "modes_mean" not in a
    assert "z0" not in table["chat"] and table["chat"]["top"]["positions"] == 1


def test_report_shows_the_new_columns_not_the_separation_rule(tmp_path):
    records, config = _records()
    result = {"records": records, "timings": {}, "total_s": 1.0, "model": "m"}
    text = tm_report.write_report(result, config, str(tmp_path))
    assert "| arithmetic | 2 | 0.604 | 0.650 | 2.50 | 2.5 |" in text  # mass, Z0, above 0.1 x
    assert "| arithmetic | 1 | 9.000 | 4.500 / 9.000 | 0.550 / 0.100 | 0.400 / 1.000 |" in text
    assert "eparation" not in text and "modes" not in text
    assert (tmp_path / "report.md").read_text() == text
