"""Policies and their samplers; imports core only.

model      small Llama-style decoder (flax.nnx), its functional API and custom VJPs
sampling   jitted KV-cache sampling (one sampler; `DecodePlan` lays out its decode loop)
trainable  which parameters train: all, the last K blocks, or LoRA adapters (split / join)
policies   tabular (free softmax; per prefix for sequences) and discretised Gaussian policies
gguf       SmolLM2 (Llama-family) GGUF files loaded into `model`
hf_llama   Hugging Face Llama checkpoints (config.json + safetensors) loaded into `model`
llama_tensors  the tensor-name table and checked parameter builder gguf and hf_llama share
tokenizer  tokenizer and chat template from a GGUF file's metadata
"""
