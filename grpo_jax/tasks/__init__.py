"""Synthetic reward tasks with a modality dial.

Every task is a frozen, hashable dataclass (a valid static jit argument) with

  attributes  name, vocab_size (incl. specials), prompt_len P, completion_len T, num_modes,
              bos_id, special_ids (never sampled), ordinary_ids
  sampling    sample_prompts(key, n) -> int32 [n, P]
              sample_reference(key, prompts [n, P]) -> int32 [n, T]   (pretraining data)
  scoring     reward(prompts [B, P], completions [B, T]) -> float32 [B]
              mode_labels(prompts, completions) -> int32 [B] in [0, num_modes) or -1
  exact       reference_mode_shares() -> float32 [num_modes]
              reference_entropy() -> [T] per-position entropy (nats); reference_stats()
              all_prompts() [Np, P], prompt_probs() [Np], prompt_index(prompts) -> [B]
              reference_answers() -> (answers [Np, A, T], probs [Np, A])
              enumerate_completions() -> [C, T] every ordinary-token completion

Tasks: "bandit" (tasks.bandit.Bandit; closed-form optima: tasks.bandit.bandit_optimum), "fork"
(tasks.fork.Fork, short enumerable sequences; closed-form targets: tasks.sequence_optima),
"arithmetic" (tasks.arithmetic.Arithmetic), "format" (tasks.format.FormatMixture).
"""

from grpo_jax.core.checks import check_name
from grpo_jax.tasks.arithmetic import Arithmetic
from grpo_jax.tasks.bandit import Bandit, bandit_optimum
from grpo_jax.tasks.base import TableTask
from grpo_jax.tasks.fork import Fork
from grpo_jax.tasks.format import FormatMixture

Task = TableTask  # the common base of every task

_REGISTRY = {"bandit": Bandit, "fork": Fork, "arithmetic": Arithmetic, "format": FormatMixture}
TASKS = tuple(_REGISTRY)


def make(name: str, **kwargs) -> TableTask:
    """Builds the task `name` (one of TASKS) with dataclass fields `kwargs`.

    Lists are turned into tuples so configs (which hold lists) give hashable tasks.
    """
    check_name("task", name, TASKS, noun="tasks")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return _REGISTRY[name](**kwargs)


__all__ = [
    "Arithmetic",
    "Bandit",
    "Fork",
    "FormatMixture",
    "Task",
    "TableTask",
    "TASKS",
    "make",
    "bandit_optimum",
]
