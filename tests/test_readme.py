"""The README's library example runs as written (so the documentation cannot rot)."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_library_example_runs():
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
    per_beta = np.asarray(namespace["per_beta"])
    assert per_beta.shape == (3,) and np.all(np.isfinite(per_beta))
    # k2 >= 0, so the loss grows with beta; at beta = 0 it is the plain policy-gradient term.
    assert np.all(np.diff(per_beta) > 0)
    grads = np.asarray(namespace["grads"])
    assert grads.shape == (8, 5, 16) and np.all(np.isfinite(grads)) and np.any(grads != 0)


def test_readme_results_are_the_published_results_md():
    """Each README results block (the one-token study, and each part of the study in
    sequences) is its docs/results/[<part>/]results.md (written by `experiments/study.py
    --publish`), with figure paths under that folder: generated, never hand-copied."""
    from grpo_jax.study import pipeline  # pylint: disable=import-outside-toplevel
    from grpo_jax.study.report import markdown  # pylint: disable=import-outside-toplevel

    root = os.path.dirname(README)
    text = open(README, encoding="utf-8").read()
    parts = [("", (markdown.README_BEGIN, markdown.README_END))]
    parts += [(p, pipeline.part_markers(p)) for p in ("sequences", "sequences-transformer")]
    for part, (begin, end) in parts:
        assert begin in text and end in text, part
        block = text.split(begin, 1)[1].split(end, 1)[0].strip()
        docs = os.path.join("docs", "results", part).rstrip(os.sep)
        results = open(os.path.join(root, docs, "results.md"), encoding="utf-8").read()
        assert block == markdown.readme_block(results, docs.replace(os.sep, "/")), part
        for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", block):
            assert os.path.exists(os.path.join(root, name)), name
