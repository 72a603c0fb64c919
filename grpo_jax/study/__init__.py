"""The study: does the KL direction matter only for multimodal references?

pipeline         run the grid, report it, publish results.md to the README
groups           exact one-token outcomes, records, the group runner of the sweep
gaussian_kl      the Gaussian toy: one Gaussian fitted to two by forward / reverse KL
gaussian_optima  exact maxima of the Gaussian policy class's objective (bistable betas)
sequence_predictions  stage 0 of the study in sequences: closed-form predictions on the fork task
token_modality   the premise on SmolLM2: how spread its next-token distributions are
grpo_lm          GRPO on SmolLM2 under four regularisers, exact answer tables
report/          statistics, verdicts, figures and markdown
"""
