"""The study: does the KL direction matter only for multimodal references?

groups   exact one-token outcomes, records, the group runner of the sweep
report/  statistics, verdicts, figures and markdown of the study
"""
