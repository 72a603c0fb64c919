"""GRPO as pure functions of (state, hyperparameters); imports core, models and tasks.

train          the GRPO step: rollout, loss function, inner updates, metrics; chunked scans
rollout        the step's sampling and teacher-forced logits (padded prompts: their lengths)
pretrain       reference pretraining on a task's reference data
reference_fit  the exact fit report of a pretrained reference
evaluate       final evaluation (exact by enumeration where possible)
"""
