"""The host side: the only layer that touches files or the process.

runner        config -> objects -> chunked jitted training (populations), program cache
sweep         grid expansion, grouping into populations, the cell cache
rundir        run-directory config check, lock, log recovery
checkpoint    orbax save / restore;  writers: JSONL, TensorBoard, progress
config_utils  strict config arguments, dotted keys;  jsonio: JSON at the edges
sharding      mesh and sharding rules; multi-host start-up
xla_setup     process settings for entry points (XLA flags, compilation cache, host memory)
"""
