"""Configs (ml_collections): each file's `get_config(arg)`; run by path with
`--config grpo_jax/configs/NAME.py[:ARG]`. The top layer: a config may import any other."""
