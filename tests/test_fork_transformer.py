"""The transformer arm of the study in sequences: a small decoder pretrained on the fork
task's reference (its exact fit reported), trained by GRPO through the shared population
loop towards the exact reference table (`reference.exact`), killed and resumed bit for bit,
its final policies enumerated exactly for the study's records."""

import ast

import jax
import numpy as np

from grpo_jax.configs import grpo as grpo_config, sequence_study, study as study_config
from grpo_jax.models import policies
from grpo_jax.run import build, checkpoint, reference, runner
from grpo_jax.study import groups


def _config(steps: int):
    c = grpo_config.get_config("task=fork")
    c.policy = "transformer"
    c.task.update(num_tokens=4, length=3, num_branches=2, fork_depth=1, slip=0.1)
    c.model.update(num_layers=1, width=32, num_heads=2, mlp_width=64)
    c.grpo.update(num_prompts=2, group_size=8)
    c.reference.update(steps=60, batch_size=64, lr=3e-3, chunk_steps=60)
    c.loss.update(kl_estimator="exact_fwd", beta=0.1)
    c.reference.exact = True
    c.train.update(num_steps=steps, chunk_steps=2, progress=False, tensorboard=False)
    c.mesh.data = 1
    return c


def test_transformer_on_the_fork_task_reports_its_fit_and_resumes_bit_for_bit(tmp_path):
    c = _config(steps=4)
    task = build.make_task(c)
    mcfg = build.make_model_config(c, task)
    logs = []
    ref = reference.load_or_pretrain_reference(c, task, mcfg, str(tmp_path / "ref"), logs.append)
    fit = [line for line in logs if "reference pretrained" in line]
    assert fit and "data_kl_seq" in fit[0] and "mode_shares_model" in fit[0]
    quiet = lambda *_: None
    cells = build.population_cells(c)
    full = runner.run_population(c, cells, str(tmp_path / "full"), ref_params=ref, log=quiet)
    assert np.isfinite(np.asarray(full.history["loss"])).all()
    # The KL's reference is the exact table, not the fit the policy starts from: at step 1
    # (policy = fit) the exact KL is the fit's error, > 0 (it would be 0 against the fit).
    assert isinstance(full.setup.ref_model, policies.SequenceTabularPolicy)
    assert np.asarray(full.history["exact_kl_fwd"])[:, 0].min() > 1e-4
    # The study's exact enumeration of a transformer: prompt-weighted joints; the fit's
    # sequence KL from the data equals the pretraining report's (another code path).
    logp = groups.final_logprobs(mcfg, jax.tree.map(lambda x: x[None], ref), task)
    vec = groups.task_vectors(task)
    assert logp.shape == (1, vec["ref"].size)
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, atol=1e-6)
    kl = float(np.sum(vec["ref"] * (np.log(vec["ref"]) - logp[0])))
    report = ast.literal_eval(fit[0].split(": ", 1)[1])  # the logged report dict
    np.testing.assert_allclose(kl, report["data_kl_seq"], rtol=1e-3, atol=1e-6)
    c_cut = _config(steps=2)  # "killed" after the first chunk
    runner.run_population(
        c_cut, build.population_cells(c_cut), str(tmp_path / "cut"), ref_params=ref, log=quiet
    )
    assert checkpoint.latest_step(str(tmp_path / "cut" / "checkpoints")) == 2
    resumed = runner.run_population(c, cells, str(tmp_path / "cut"), ref_params=ref, log=quiet)
    assert resumed.start_step == 2
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_transformer_class_of_the_study_in_sequences_is_declared_and_wired():
    # Its cells (no training here): the transformer, regularised towards the exact table,
    # the primary arms only, on the declared references, with the pilot's learning rate.
    seq = sequence_study.get_config("transformer")
    cells = study_config.cells(seq)
    assert {c.policy for c in cells} == {"transformer"}
    assert all(c.reference.exact and c.optim.lr == 1e-3 for c in cells)
    assert {c.eval.arm for c in cells} == set(seq.primary)
    assert {c.eval.label for c in cells} == set(sequence_study.TRANSFORMER_MODALITIES)
    assert len(cells) == 4 * 2 * len(seq.betas) * seq.num_seeds * 2
    assert all(c.model.num_layers == 2 and c.model.width == 64 for c in cells)
    for c in cells[:2]:
        build.validate_config(c)
    assert "transformer" in seq.prediction.lower() and seq.subdir != "sequences"
