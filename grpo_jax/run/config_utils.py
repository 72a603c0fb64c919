"""Config helpers shared by every entry point: dotted get/set, the strict `:arg` parser, and
the task built from a task config.

Config files are Python (`grpo_jax/configs/*.py`, `get_config(arg) -> ConfigDict`, big_vision
style).
The string after the file's ':' (`grpo_jax/configs/grpo.py:task=arithmetic,quick`) is parsed by
`parse_arg` against the argument names the config declares, with their defaults' types:

    >>> parse_arg("task=arithmetic,quick", task="bandit", quick=False)
    {'task': 'arithmetic', 'quick': True}
    >>> parse_arg("task=bandit,quikc", task="bandit", quick=False)
    Traceback (most recent call last):
    ValueError: unknown config argument 'quikc' in 'task=bandit,quikc'; valid: quick, task
"""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _convert(name: str, text: str, default: Any, arg: str) -> Any:
    """Parse `text` as the type of `default` (bool, int, float or str)."""
    if isinstance(default, bool):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(
            f"config argument {name}={text!r} in {arg!r} is not a boolean; "
            f"valid: {', '.join(_TRUE + _FALSE)}"
        )
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(
                    f"config argument {name}={text!r} in {arg!r} is not " f"{kind.__name__}"
                ) from None
    return text


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """The `:arg` string of a config path -> `{name: value}` over exactly `defaults`' names.

    `arg` is a comma-separated list of `name=value` or bare `name` (a bare name sets a
    boolean argument to True). Values take the type of their default. An unknown name, a
    bare name of a non-boolean argument, a repeated name or a bad value is a `ValueError`
    naming it and listing the valid names: a typo never silently runs the defaults.
    """
    out = dict(defaults)
    seen: set[str] = set()
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, text = part.partition("=")
        name = name.strip()
        if name not in defaults:
            raise ValueError(
                f"unknown config argument {name!r} in {arg!r}; valid: "
                f"{', '.join(sorted(defaults))}"
            )
        if name in seen:
            raise ValueError(f"config argument {name!r} given twice in {arg!r}")
        seen.add(name)
        if not eq:
            if not isinstance(defaults[name], bool):
                raise ValueError(
                    f"config argument {name!r} in {arg!r} needs a value " f"({name}=...)"
                )
            out[name] = True
        else:
            out[name] = _convert(name, text.strip(), defaults[name], arg)
    return out


def _lookup_parent(config: ml_collections.ConfigDict, key: str):
    """The ConfigDict that holds dotted `key` and the last name; KeyError if missing."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "<root>"
            valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise KeyError(f"Config key {key!r} not found: {where!r} has keys {valid}")
        if i < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def get_value(config: ml_collections.ConfigDict, key: str) -> Any:
    """Value of dotted `key` in `config` (KeyError naming the key if absent)."""
    parent, name = _lookup_parent(config, key)
    return parent[name]


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set existing dotted `key` in place (ml_collections' type checks apply)."""
    parent, name = _lookup_parent(config, key)
    with parent.unlocked():
        parent[name] = value


def delete_value(config: ml_collections.ConfigDict, key: str) -> None:
    """Remove dotted `key` if present (no error when absent)."""
    try:
        parent, name = _lookup_parent(config, key)
    except KeyError:
        return
    with parent.unlocked():
        del parent[name]


def flatten(config, prefix: str = "") -> dict[str, Any]:
    """`{dotted key: leaf value}` of a ConfigDict or nested dict (lists stay leaves)."""
    items = config.items() if hasattr(config, "items") else ()
    out: dict[str, Any] = {}
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, ml_collections.ConfigDict)):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def make_task(task_config):
    """The task a task config describes: `{"name": ..., **dataclass fields}` (lists become
    tuples inside `tasks.make`, so the task stays hashable)."""
    from grpo_jax import tasks  # pylint: disable=import-outside-toplevel

    kwargs = dict(task_config.to_dict() if hasattr(task_config, "to_dict") else task_config)
    return tasks.make(kwargs.pop("name"), **kwargs)


def check_override_keys(config, argv, flag: str = "config") -> None:
    """Raise ValueError naming the first `--FLAG.KEY=...` in `argv` whose dotted KEY is not a
    field of `config`, with the valid keys at that level."""
    prefix = f"--{flag}."
    for arg in argv[1:]:
        if arg.startswith(prefix):
            key = arg[len(prefix) :].split("=", 1)[0]
            try:
                get_value(config, key)
            except KeyError as e:
                raise ValueError(f"{prefix}{key}: {e.args[0]}") from None


def load_config_file(spec: str):
    """`path/to/config.py[:arg]` -> the file's `get_config(arg)` (as config_flags does)."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel

    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location("_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def run_app(main, flag: str = "config") -> None:
    """`absl.app.run(main)` for every entry point:

    * a misspelt `--config.KEY=VALUE` override ends with one line naming the bad key and
      the valid keys (ml_collections alone raises a bare traceback);
    * the process settings are applied (`launch.configure`, one line on stderr): on the CPU
      freed host memory is kept for the next call and the persistent compilation cache is
      on, so a second run loads its compiled programs; `--nohost_memory_reuse` and
      `--nocompilation_cache` turn them off;
    * a full disk ends the run with one last line naming the file and ENOSPC
      (`launch.run_main`), not under the tracebacks of a failing shutdown.
    """
    import sys  # pylint: disable=import-outside-toplevel

    from absl import app, flags  # pylint: disable=import-outside-toplevel

    from grpo_jax.run import launch  # pylint: disable=import-outside-toplevel

    if "compilation_cache" not in flags.FLAGS:
        flags.DEFINE_boolean(
            "compilation_cache", True, "Persistent XLA compilation cache under ~/.cache/grpo_jax."
        )
    if "host_memory_reuse" not in flags.FLAGS:
        flags.DEFINE_boolean(
            "host_memory_reuse",
            True,
            "On the CPU: keep freed host memory for the next call (glibc) and run CPU "
            "programs on the calling thread.",
        )

    def parse(argv):
        """absl's parser (usage errors as usual), run once: a second parse of `--config FILE`
        would define its `--config.KEY` override flags again ("defined twice")."""
        try:
            return app.parse_flags_with_usage(argv)
        except (AttributeError, KeyError, ValueError) as e:
            spec = None
            for i, a in enumerate(argv):
                if a.startswith(f"--{flag}="):
                    spec = a.split("=", 1)[1]
                elif a == f"--{flag}" and i + 1 < len(argv):
                    spec = argv[i + 1]
            # (Without `--config` on the command line, ml_collections applies the overrides
            # to the default file when the flag is defined, before this runs.)
            try:
                if spec:
                    check_override_keys(load_config_file(spec), argv, flag)
            except (ValueError, OSError) as bad:
                sys.exit(f"FATAL config error: {bad}")
            sys.exit(f"FATAL config error: {e}")

    def main_with_settings(argv):
        launch.configure(
            host_memory_reuse=flags.FLAGS.host_memory_reuse,
            compilation_cache=flags.FLAGS.compilation_cache,
        )
        return launch.run_main(main, argv)  # a full disk: one last line, exit status 1

    app.run(main_with_settings, flags_parser=parse)
