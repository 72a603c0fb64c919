"""Checkpoints: bit-exact round trips of generic pytrees, metadata, steps, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax.run import checkpoint
from grpo_jax.models import model


def _state():
    cfg = model.ModelConfig(
        vocab_size=11, num_layers=1, width=16, num_heads=2, mlp_width=32, max_len=5
    )
    params = jax.jit(model.init, static_argnums=0)(cfg, jax.random.key(0, impl="rbg"))
    opt_state = optax.adam(1e-3).init(params)
    return {
        "params": params,
        "opt": opt_state,
        "key": jax.random.key(7),  # typed key
        "raw_key": jax.random.PRNGKey(3),  # uint32 key data
        "step": jnp.int32(12),
        "misc": (
            jnp.asarray([1.5, -0.0, jnp.nan, 1e-38], jnp.float32),
            [jnp.ones((2, 3), jnp.bfloat16) / 3, jnp.arange(4, dtype=jnp.int8)],
        ),
    }


def _bits(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return x.dtype, np.asarray(x).tobytes()


def test_round_trip_is_bit_exact(tmp_path):
    d = str(tmp_path / "ckpt")
    assert checkpoint.latest_step(d) is None
    state = _state()
    checkpoint.save(d, 5, state, {"step": 5, "config": {"lr": 1e-3, "shape": (2, 3)}})
    for target in (state, jax.eval_shape(lambda: state)):
        restored, meta = checkpoint.restore(d, target)
        assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
        for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
            assert _bits(a) == _bits(b)
        assert meta == {"step": 5, "config": {"lr": 1e-3, "shape": [2, 3]}}
    # The restored key draws the same numbers.
    np.testing.assert_array_equal(
        jax.random.uniform(restored["key"], (3,)), jax.random.uniform(state["key"], (3,))
    )


def test_steps_metadata_and_errors(tmp_path):
    d = str(tmp_path / "ckpt")
    tree = {"w": jnp.arange(3.0)}
    checkpoint.save(d, 10, tree, {"step": 10})
    checkpoint.save(d, 20, {"w": jnp.arange(3.0) + 1}, {"step": 20})
    checkpoint.save(d, 10, {"w": jnp.arange(3.0) * 2}, {"step": 10, "again": True})  # replace
    assert checkpoint.latest_step(d) == 20 and checkpoint.all_steps(d) == [10, 20]
    latest, meta = checkpoint.restore(d, tree)
    np.testing.assert_array_equal(latest["w"], [1, 2, 3])
    old, meta = checkpoint.restore(d, tree, step=10)
    np.testing.assert_array_equal(old["w"], [0, 2, 4])
    assert meta == {"step": 10, "again": True}
    assert checkpoint.read_metadata(d) == {"step": 20}
    with pytest.raises(ValueError, match="shape"):
        checkpoint.restore(d, {"w": jnp.arange(4.0)})
    with pytest.raises(ValueError, match="leaves"):
        checkpoint.restore(d, {"w": jnp.arange(3.0), "v": jnp.zeros(1)})
    with pytest.raises(FileNotFoundError):
        checkpoint.restore(d, tree, step=15)
    with pytest.raises(FileNotFoundError):
        checkpoint.restore(str(tmp_path / "nothing"), tree)
    with pytest.raises(TypeError):
        checkpoint.save(d, 30, tree, {"bad": object()})
    assert checkpoint.latest_step(d) == 20  # the failed save wrote nothing
