"""The package's layers: imports go one way, core <- models <- tasks <- rl <- run <- study,
then configs; and nothing edits sys.path (the package is installed with `pip install -e .`)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "grpo_jax")
LAYERS = ("core", "models", "tasks", "rl", "run", "study", "configs")


def _modules():
    for dirpath, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _layer(dotted: str) -> int | None:
    """Layer index of a `grpo_jax.<layer>...` module name, None for the package root."""
    parts = dotted.split(".")
    if parts[0] != "grpo_jax" or len(parts) < 2:
        return None
    if parts[1] not in LAYERS:
        raise AssertionError(f"grpo_jax.{parts[1]} belongs to no layer; layers: {LAYERS}")
    return LAYERS.index(parts[1])


def _imports(path: str):
    """Every grpo_jax module `path` imports (top level and inside functions)."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("grpo_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "grpo_jax":  # `from grpo_jax import core` names a layer
                yield from (f"grpo_jax.{a.name}" for a in node.names)
            elif node.module.startswith("grpo_jax"):
                yield node.module


def test_every_module_belongs_to_a_layer_and_imports_go_down():
    upward = []
    for path in _modules():
        rel = os.path.relpath(path, ROOT)
        dotted = rel[: -len(".py")].replace(os.sep, ".").removesuffix(".__init__")
        own = _layer(dotted)
        for imported in _imports(path):
            target = _layer(imported)
            if own is not None and target is not None and target > own:
                upward.append(f"{rel} ({LAYERS[own]}) imports {imported} ({LAYERS[target]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("folder", ["grpo_jax", "experiments", "benchmarks", "tests"])
def test_no_sys_path_edits(folder):
    edits = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".py") and name != os.path.basename(__file__):
                text = open(os.path.join(dirpath, name)).read()
                if "sys.path.insert" in text or "sys.path.append" in text:
                    edits.append(os.path.relpath(os.path.join(dirpath, name), ROOT))
    assert not edits, f"sys.path edited in {edits}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk finds a function-level upward import (the checker is not vacuous)."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from grpo_jax.run import runner\n")
    assert list(_imports(str(path))) == ["grpo_jax.run"]
    assert _layer("grpo_jax.run.runner") > _layer("grpo_jax.core.kl")
