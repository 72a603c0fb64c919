"""Config -> objects: the checks of a GRPO config and what a population is built from.

`validate_config(config)` names a bad field and its valid values before anything compiles;
`build_population(config, cells)` turns a config and its member cells (per-member values of
`VMAPPABLE_KEYS`) into the static `train.RLSetup`, the task, the initial population state
and the stacked `train.Hparams` that `runner.run_population` compiles and runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from grpo_jax import tasks
from grpo_jax.core import kl_control, losses
from grpo_jax.core.kl_choice import KLChoice
from grpo_jax.models import hf_llama, lora, model as model_lib
from grpo_jax.models import policies, trainable as trainable_lib
from grpo_jax.rl import pretrain, train
from grpo_jax.run import checkpoint, config_utils, reference, sharding

# Keys of a config that may differ between members of one population (pytree leaves of the
# train state / hyperparameters); everything else changes the compiled program.
VMAPPABLE_KEYS = (
    "train.seed",
    "loss.beta",
    "loss.eps_low",
    "loss.eps_high",
    "optim.lr",
    "loss.kl_choice",
    "loss.entropy_coef",
    "init.start",
    "kl_control.target",
    "kl_control.rate",
)

# Starting points (`init.start`): "fit" for every policy; the others for the Gaussian policy
# only, each a discretised Gaussian of the reference's component width sigma: on the
# rewarded answer, or midway between the outermost mode centres (the valley of a two-mode
# reference; the centre of a one-mode one).
STARTS = ("fit", "rewarded_mode", "middle")

NONFINITE_MODES = ("stop", "skip")


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config.{field}: {msg}")


def _require_number(
    config,
    field: str,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """config.<field> is a finite number in [low, high] (open at `low` with low_open, at
    `high` with high_open; an infinite bound is always open)."""
    v = config_utils.get_value(config, field)
    high_open = high_open or not math.isfinite(high)
    bound = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    ok = (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and (v < high if high_open else v <= high)
        and (v > low if low_open else v >= low)
    )
    _require(ok, field, f"{v!r} is not a finite number in {bound}")


def _require_finite_numbers(config: ml_collections.ConfigDict) -> None:
    """No NaN or infinity anywhere in the config (a float leaf, or inside a list/tuple leaf):
    the first one is a ValueError naming its key. Ranges are checked key by key after this."""
    for key, value in config_utils.flatten(config).items():
        items = value if isinstance(value, (list, tuple)) else (value,)
        for x in items:
            if isinstance(x, (float, np.floating)) and not math.isfinite(x):
                raise ValueError(
                    f"config.{key}: {value!r} is not finite; every number of a config must "
                    f"be a finite number (set a finite value)"
                )


def validate_config(config: ml_collections.ConfigDict, task_given: bool = False) -> None:
    """Check every field a run depends on; raise `ValueError` naming the bad field and its
    valid values or range. Runs before anything is traced or compiled. `task_given`: the run
    gets its task object from the caller, so `config.task` is not read.

    Each key with a range is checked against it; then no number anywhere in the config may
    be NaN or infinite (`_require_finite_numbers`); last, the task's fields are checked by
    building the task (its dataclass's own checks, reported under `config.task`)."""
    _require(
        task_given or config.task.name in tasks.TASKS,
        "task.name",
        f"{config.task.name!r} is not a task; valid: {', '.join(tasks.TASKS)}",
    )
    _require_number(config, "loss.beta", 0.0)
    _require_number(config, "loss.entropy_coef", 0.0)
    _require_number(config, "loss.eps_low", 0.0, 1.0)
    _require_number(config, "loss.eps_high", 0.0)
    try:
        make_loss_config(config)
        kl_choice_of(config)
    except ValueError as e:  # re-raise with the config path
        raise ValueError(f"config.loss: {e}") from None
    _validate_policy(config, task_given)
    for field in ("num_layers", "width", "num_heads", "mlp_width"):
        _require(int(config.model[field]) >= 1, f"model.{field}", "must be >= 1")
    _require(
        config.model.width % config.model.num_heads == 0,
        "model.width",
        f"{config.model.width} is not divisible by model.num_heads " f"{config.model.num_heads}",
    )
    _require(
        config.model.dtype in ("float32", "bfloat16"),
        "model.dtype",
        f"{config.model.dtype!r}; valid: float32, bfloat16",
    )
    for field in ("num_prompts", "group_size", "inner_steps"):
        _require(int(config.grpo[field]) >= 1, f"grpo.{field}", "must be >= 1")
    _require(
        config.grpo.group_size >= 2,
        "grpo.group_size",
        "group-relative advantages need at least 2 completions per prompt",
    )
    _require_number(config, "grpo.temperature", 0.0, low_open=True)
    _require(
        config.grpo.get("one_token_draw", "gumbel") in policies.DRAWS,
        "grpo.one_token_draw",
        f"{config.grpo.get('one_token_draw')!r}; valid: {', '.join(policies.DRAWS)}",
    )
    _validate_optim_and_kl_control(config)
    _validate_train_and_mesh(config)
    _validate_trainable(config)
    _require_finite_numbers(config)
    if not task_given:
        try:
            make_task(config)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config.task: {e}") from None


def _validate_policy(config: ml_collections.ConfigDict, task_given: bool) -> None:
    """`validate_config`'s checks of the policy class, its start and its reference."""
    _require(
        config.policy in ("transformer",) + tuple(policies.POLICIES),
        "policy",
        f"{config.policy!r}; valid: transformer, {', '.join(policies.POLICIES)}",
    )
    check_start(config.policy, config.init.start)
    _require(
        config.policy != "transformer"
        or not exact_reference(config)
        or (not task_given and config.task.name in ("bandit", "fork")),
        "reference.exact",
        f"needs a task with an exact reference table (bandit, fork), not {config.task.name!r}",
    )
    if config.policy != "transformer":
        tabular_tasks = ("bandit", "fork") if config.policy == "tabular" else ("bandit",)
        _require(
            not task_given and config.task.name in tabular_tasks,
            "policy",
            f"{config.policy!r} is for the tasks {', '.join(tabular_tasks)} (an exact "
            f"reference table), not {config.task.name!r}",
        )


def _validate_optim_and_kl_control(config: ml_collections.ConfigDict) -> None:
    """`validate_config`'s checks of `config.optim` and the target-KL controller."""
    _require_number(config, "optim.lr", 0.0, low_open=True)
    _require(
        config.kl_control.measure in kl_control.KL_CONTROL,
        "kl_control.measure",
        f"{config.kl_control.measure!r}; valid: '' (off), "
        + ", ".join(k for k in kl_control.KL_CONTROL if k),
    )
    _require_number(config, "kl_control.target", 0.0)
    _require_number(config, "kl_control.rate", 0.0, low_open=True)
    _require_number(config, "optim.b1", 0.0, 1.0, high_open=True)
    _require_number(config, "optim.b2", 0.0, 1.0, high_open=True)
    _require_number(config, "optim.eps", 0.0, low_open=True)
    _require_number(config, "optim.grad_clip", -math.inf)  # <= 0: no clipping


def _validate_train_and_mesh(config: ml_collections.ConfigDict) -> None:
    """`validate_config`'s checks of `config.train`, the reference checkpoint and the mesh."""
    t = config.train
    for field in (
        "num_steps",
        "chunk_steps",
        "num_seeds",
        "log_every_steps",
    ):
        _require(int(t[field]) >= 1, f"train.{field}", f"{t[field]!r}; must be >= 1")
    _require(
        int(t.checkpoint_every_chunks) >= 0,
        "train.checkpoint_every_chunks",
        f"{t.checkpoint_every_chunks!r}; must be >= 0 (0: no checkpoints, no resume)",
    )
    _require(
        int(t.num_steps) % int(t.chunk_steps) == 0,
        "train.num_steps",
        f"{t.num_steps} is not a multiple of "
        f"train.chunk_steps {t.chunk_steps} (every jit call runs a whole chunk)",
    )
    _require(
        int(t.max_to_keep) >= 0,
        "train.max_to_keep",
        f"{t.max_to_keep!r}; must be >= 0 (0 keeps every checkpoint)",
    )
    _require_number(config, "train.max_skipped_frac", 0.0, 1.0)
    _require(
        t.on_nonfinite in NONFINITE_MODES,
        "train.on_nonfinite",
        f"{t.on_nonfinite!r}; valid: {', '.join(NONFINITE_MODES)}",
    )
    for field in ("steps", "batch_size", "chunk_steps"):
        value = config.reference[field]
        _require(
            isinstance(value, int) and value >= 1,
            f"reference.{field}",
            f"{value!r}; must be an integer >= 1 (pretraining the reference)",
        )
    _require_number(config, "reference.lr", 0.0, low_open=True)
    ref = config.reference.checkpoint
    hf_dir = reference.safetensors_dir(config)
    _require(
        not (hf_dir and ref),
        "reference.safetensors_dir",
        f"{hf_dir!r} and config.reference.checkpoint {ref!r} are both set; a reference "
        "comes from one of them",
    )
    _require(
        not hf_dir or config.policy == "transformer",
        "reference.safetensors_dir",
        f"{hf_dir!r} is for the transformer policy, not {config.policy!r}",
    )
    _require(
        not hf_dir or os.path.isfile(os.path.join(hf_dir, hf_llama.CONFIG_FILE)),
        "reference.safetensors_dir",
        f"{hf_dir!r} holds no {hf_llama.CONFIG_FILE} (a Hugging Face Llama checkpoint)",
    )
    _require(
        not ref or checkpoint.latest_step(ref) is not None,
        "reference.checkpoint",
        f"{ref!r} holds no checkpoint (a typo? leave it empty to pretrain one)",
    )
    n_dev = len(jax.devices())
    data = int(config.mesh.data)
    _require(
        data == -1 or 1 <= data <= n_dev,
        "mesh.data",
        f"{data}; must be -1 (all) or between 1 and {n_dev}",
    )
    size = n_dev if data == -1 else data
    batch = config.grpo.num_prompts * config.grpo.group_size
    _require(
        batch % size == 0,
        "grpo.num_prompts",
        f"batch num_prompts*group_size = {batch} must be divisible by the {size} "
        f"devices of the data axis (config.mesh.data)",
    )


# ------------------------------------------------------------------ trainable subsets


def _validate_trainable(config: ml_collections.ConfigDict) -> None:
    """`train.trainable` (`trainable.TRAINABLE`) and, for "lora", `train.lora`: one-line
    ValueErrors naming the key and the valid values."""
    spec = trainable_of(config)
    try:
        mode, k = trainable_lib.parse(spec)
    except ValueError as e:
        raise ValueError(f"config.train.trainable: {e}") from None
    _require(
        mode == "all" or config.policy == "transformer",
        "train.trainable",
        f"{spec!r} is for the transformer policy; {config.policy!r} trains all parameters",
    )
    _require(
        not k or reference.safetensors_dir(config) or k <= int(config.model.num_layers),
        "train.trainable",
        f"{spec!r}: K = {k} exceeds model.num_layers = {config.model.num_layers}",
    )
    if mode == "lora":
        lora_of(config)


def trainable_of(config) -> str:
    """The config's trainable subset (`train.trainable`; "all" when the key is absent)."""
    return str(config.train.get("trainable", "all"))


def lora_of(config) -> lora.LoRAConfig | None:
    """The adapters of `train.lora` when `train.trainable` is "lora" or "lora:K", else None."""
    if trainable_lib.parse(trainable_of(config))[0] != "lora":
        return None
    fields = dict(config.train.get("lora", {}))
    unknown = sorted(set(fields) - {"rank", "alpha", "targets"})
    _require(not unknown, "train.lora", f"unknown keys {unknown}; valid: rank, alpha, targets")
    try:
        return lora.LoRAConfig(**fields)
    except ValueError as e:  # "lora.<field>: ..." with the config path
        raise ValueError(f"config.train.{e}") from None


def policy_model_config(config, model_config):
    """The policy's model: `model_config` (the reference's) with `train.lora`'s adapters
    when `train.trainable` is "lora" or "lora:K"."""
    lora = lora_of(config)
    if lora is None or not isinstance(model_config, model_lib.ModelConfig):
        return model_config
    return dataclasses.replace(model_config, lora=lora)


def make_task(config) -> Any:
    return config_utils.make_task(config.task)


def make_model_config(config, task):
    """The policy's model: a transformer `ModelConfig` (`config.policy == "transformer"`:
    `config.model`, or the config.json of `config.reference.safetensors_dir`) or
    a one-token policy of policies.py ("tabular", "gaussian")."""
    if config.policy != "transformer":
        return policies.make(config.policy, task)
    if reference.safetensors_dir(config):  # a Hugging Face checkpoint's own model
        return reference.safetensors_model_config(config, task)
    return pretrain.model_config_for(task, **dict(config.model))


def exact_reference(config) -> bool:
    """Whether the KL's reference is the task's exact table (`policies.reference_params`):
    always for the one-token and tabular policies, and for a transformer with
    `reference.exact` (it starts from its pretrained fit, regularised towards the data)."""
    return config.policy != "transformer" or bool(config.reference.get("exact", False))


def check_start(policy: str, start: str) -> None:
    """`init.start` is one of `STARTS`, and not "fit" only for the Gaussian policy (the
    config's and every member's)."""
    _require(start in STARTS, "init.start", f"{start!r}; valid: {', '.join(STARTS)}")
    _require(
        start == "fit" or policy == "gaussian",
        "init.start",
        f"{start!r} is for the gaussian policy, not {policy!r}",
    )


def initial_params(config, task, model_config, ref_params, start: str = "fit"):
    """Where the policy starts (`STARTS`): the reference itself (transformer, tabular), or
    for the Gaussian policy the maximum-likelihood fit to the reference (moment matching),
    or a Gaussian of width sigma on the rewarded answer or between the outer modes."""
    check_start(config.policy, start)
    if config.policy != "gaussian":
        return ref_params
    if start == "fit":
        probs = np.exp(np.asarray(ref_params["logits"], np.float64))[list(task.ordinary_ids)]
        return model_config.fit_to(probs / probs.sum())
    centres = np.asarray(task.centres, np.float64)
    mean = (
        task.target_tokens[0] if start == "rewarded_mode" else 0.5 * (centres.min() + centres.max())
    )
    return {"mean": jnp.float32(mean), "log_std": jnp.float32(math.log(task.sigma))}


def kl_choice_of(config, cell: Mapping[str, Any] | None = None) -> KLChoice:
    """The KL choice of a cell: its `loss.kl_choice`, else the config's, else the config's
    `loss.kl_estimator`/`loss.kl_placement` names. (beta = 0 is still this choice here;
    `KLChoice.of(choice, beta)` names what the run actually does.)"""
    cell = cell or {}
    choice = cell.get("loss.kl_choice", config.loss.get("kl_choice", ""))
    return (
        KLChoice.parse(choice)
        if choice
        else KLChoice(config.loss.kl_estimator, config.loss.kl_placement)
    )


def make_loss_config(config, choice: KLChoice | None = None, **numeric) -> losses.LossConfig:
    """`losses.LossConfig` from `config.loss` with the KL choice `choice` (default: the
    config's); `numeric` overrides leaves (e.g. beta=array)."""
    fields = dict(config.loss)
    fields.pop("kl_choice", None)
    fields.update((choice or kl_choice_of(config)).loss_fields())
    fields.update(numeric)
    return losses.make_config(**fields)


def population_kl_choices(config, cells) -> tuple[KLChoice, ...]:
    """The distinct KL choices of a population, in first-seen order; () when there is only
    one (then the choice stays static and no switch is compiled)."""
    choices = tuple(dict.fromkeys(kl_choice_of(config, c) for c in cells))
    return () if len(choices) == 1 else choices


def make_setup(config, task, model_config, mesh=None, kl_choices=()) -> train.RLSetup:
    """The static `train.RLSetup` of `config`; `model_config` is the reference's model (the
    policy's gets `train.lora`'s adapters, `policy_model_config`)."""
    g, o = config.grpo, config.optim
    try:
        trainable_lib.check(trainable_of(config), policy_model_config(config, model_config))
    except ValueError as e:
        raise ValueError(f"config.train.trainable: {e}") from None
    return train.RLSetup(
        model=policy_model_config(config, model_config),
        trainable=trainable_of(config),
        task=task,
        num_prompts=int(g.num_prompts),
        group_size=int(g.group_size),
        inner_steps=int(g.inner_steps),
        temperature=float(g.temperature),
        one_token_draw=str(g.get("one_token_draw", "gumbel")),  # absent: as before the key
        grad_clip=float(o.grad_clip),
        adam_b1=float(o.b1),
        adam_b2=float(o.b2),
        adam_eps=float(o.eps),
        skip_zero_grad=bool(config.train.skip_zero_grad),
        data_sharding=None if mesh is None else sharding.data_sharding(mesh),
        kl_choices=tuple(kl_choices),
        ref_model=policies.make("tabular", task) if exact_reference(config) else None,
        kl_control=str(config.kl_control.measure),
    )


def cell_value(config, cell: Mapping[str, Any], key: str):
    """A cell's value for the dotted `key`, else the config's (looked up only then)."""
    return cell[key] if key in cell else config_utils.get_value(config, key)


def population_cells(config) -> list[dict[str, Any]]:
    """The members of `config`'s own population: `num_seeds` consecutive seeds."""
    base = {k: config_utils.get_value(config, k) for k in VMAPPABLE_KEYS}
    return [
        dict(base, **{"train.seed": int(config.train.seed) + i})
        for i in range(int(config.train.num_seeds))
    ]


MEMBER_RANGES = (
    ("loss.beta", 0.0, math.inf),
    ("loss.entropy_coef", 0.0, math.inf),
    ("loss.eps_low", 0.0, 1.0),
    ("loss.eps_high", 0.0, math.inf),
    ("optim.lr", 0.0, math.inf),
    ("kl_control.target", 0.0, math.inf),
    ("kl_control.rate", 0.0, math.inf),
)


def check_member(cell: Mapping[str, Any], value: Callable[[str], float]) -> None:
    """A population member's numeric values are finite and in range (as `validate_config`
    checks the config's own): a ValueError names the cell, the key and the range."""
    for key, low, high in MEMBER_RANGES:
        v = value(key)
        if not (math.isfinite(v) and low <= v <= high) or (key == "optim.lr" and v <= 0):
            raise ValueError(
                f"cell {dict(cell)}: {key} = {v!r} is not a finite number in "
                f"[{low}, {high}]" + (" (and > 0)" if key == "optim.lr" else "")
            )


def population_hparams(config, cells: Sequence[Mapping[str, Any]]) -> train.Hparams:
    """Numeric hyperparameters of `cells`, every leaf stacked along a leading axis [S]."""
    choices = population_kl_choices(config, cells)
    # Every member's LossConfig has the same static names (a stacked pytree); with a switch
    # they are those of the first choice, and `kl_index` indexes the member's own.
    static_choice = choices[0] if choices else kl_choice_of(config, cells[0])

    def one(cell):
        value = lambda k: float(cell_value(config, cell, k))
        check_member(cell, value)
        choice = kl_choice_of(config, cell)
        loss_cfg = make_loss_config(
            config,
            static_choice,
            beta=value("loss.beta"),
            eps_low=value("loss.eps_low"),
            eps_high=value("loss.eps_high"),
            entropy_coef=value("loss.entropy_coef"),
        )
        control = {}
        if config.kl_control.measure:  # the target-KL controller's leaves
            _require(
                value("loss.beta") > 0,
                "loss.beta",
                f"cell {dict(cell)}: the target-KL controller starts from beta > 0 (log beta)",
            )
            control = dict(
                kl_target=np.float32(value("kl_control.target")),
                kl_rate=np.float32(value("kl_control.rate")),
            )
        return train.Hparams(
            loss=loss_cfg,
            lr=np.float32(value("optim.lr")),
            kl_index=np.int32(choices.index(choice) if choices else 0),
            **control,
        )

    def stack(*xs):  # on the host, one transfer per leaf (not one per member and leaf)
        dtype = jnp.asarray(xs[0]).dtype  # the leaf's jax dtype (Python float -> float32)
        return jnp.asarray(np.stack([np.asarray(x, dtype) for x in xs]))

    return jax.tree.map(stack, *[one(c) for c in cells])


def _init_population(setup, config, cells, task, model_config, ref_params, mesh):
    """The population's initial state: each member from its `init.start` (one shared start
    is broadcast; several are stacked per member); the KL's reference `ref_params`, or the
    task's exact table (`exact_reference`)."""
    names = [str(cell_value(config, c, "init.start")) for c in cells]
    starts = {
        n: initial_params(config, task, model_config, ref_params, n) for n in dict.fromkeys(names)
    }
    if config.policy == "transformer" and exact_reference(config):
        ref_params = policies.reference_params(task)
    shared = len(starts) == 1
    start = (
        starts[names[0]]
        if shared
        else jax.tree.map(lambda *xs: jnp.stack(xs), *[starts[n] for n in names])
    )

    def init(start, ref, keys, betas):
        one = lambda s, k, b: train.init_rl_state(setup, s, ref, k, b)
        return jax.vmap(one, in_axes=(None if shared else 0, 0, 0))(start, keys, betas)

    keys = jnp.stack([jax.random.PRNGKey(int(cell_value(config, c, "train.seed"))) for c in cells])
    # The controlled beta's start (`kl_control`): each member's loss.beta.
    betas = jnp.asarray([float(cell_value(config, c, "loss.beta")) for c in cells], jnp.float32)
    shape = jax.eval_shape(init, start, ref_params, keys, betas)
    shardings = sharding.param_shardings(
        shape, mesh, bool(config.mesh.shard_params), leading_axes=1
    )
    return jax.jit(init, out_shardings=shardings)(start, ref_params, keys, betas)


def random_reference(config, seed: int = 0):
    """`config`'s transformer at a random init: a reference whose values do not change the
    shapes or the cost of a program (benchmarks, compile checks)."""
    task = make_task(config)
    return model_lib.init(make_model_config(config, task), jax.random.PRNGKey(seed))


def build_population(
    config, cells, ref_params=None, reference_dir=None, log=print, task=None, model_config=None
):
    """(setup, task, initial population state, stacked hparams) of `config` and its member
    `cells`: what the chunk program is compiled for. `ref_params` default:
    `reference.load_or_pretrain_reference` (cached in `reference_dir`): the transformer's
    start, and its KL's reference unless `exact_reference`. `task` and
    `model_config` (e.g. a GGUF model's) replace `config.task` and `config.model`."""
    task = make_task(config) if task is None else task
    mcfg = make_model_config(config, task) if model_config is None else model_config
    mesh = sharding.make_mesh(config.mesh)
    setup = make_setup(config, task, mcfg, mesh, population_kl_choices(config, cells))
    hp = population_hparams(config, cells)
    if ref_params is None:
        ref_params = reference.load_or_pretrain_reference(
            config, task, mcfg, reference_dir, log=log
        )
    state = _init_population(setup, config, cells, task, setup.model, ref_params, mesh)
    if setup.trainable != "all":
        one = jax.tree.map(lambda x: x[0], state.params)
        n_train, n_all = trainable_lib.count(setup.trainable, setup.model, one)
        log(f"trainable {setup.trainable}: {n_train:,} of {n_all:,} parameters per member")
    return setup, task, state, hp
