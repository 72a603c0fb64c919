"""Policies and their samplers; imports core only.

model      small Llama-style decoder (flax.nnx), its functional API and custom VJPs
sampling   jitted KV-cache sampling (one sampler; `DecodePlan` lays out its decode loop)
policies   one-token policies: tabular (free softmax) and discretised Gaussian
gguf       SmolLM2 (Llama-family) GGUF files loaded into `model`
tokenizer  tokenizer and chat template from a GGUF file's metadata
"""
