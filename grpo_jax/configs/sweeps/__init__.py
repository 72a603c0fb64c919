"""Sweep definitions: each file has ``get_sweep(arg=None) -> (base ConfigDict, axes)``.

An axis is ``(dotted_key, values)`` or a zipped axis built with
``grpo_jax.sweep.zip_axis({key: values, ...})``; cells are the cartesian product of the axes.
Run one with::

  python experiments/sweep.py --sweep grpo_jax/configs/sweeps/NAME.py[:arg] --workdir DIR \
      --runner package.module:function

See ``grpo_jax/run/sweep.py`` for grouping into vmapped populations and the result cache.
"""
