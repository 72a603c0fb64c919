"""Tests for grpo_jax.models.hf_llama on tiny random Llama checkpoints written here the way
``LlamaForCausalLM.save_pretrained`` writes one (config.json, safetensors with Hugging Face
names, ``[out, in]`` matrices): grouped-query attention (4 query heads, 2 key/value heads),
an MLP wider than the model (non-square matrices), rope_theta 500.

* tied embeddings, float32, two shards and ``model.safetensors.index.json``;
* an untied ``lm_head``, bfloat16 on disk, one file.

The loaded model's logits are compared with the NumPy forward of tests/llama_numpy.py in
Hugging Face's convention (rotate-half RoPE on the rows as stored), and, when torch and
transformers are installed, with transformers' own ``LlamaForCausalLM`` reading the same
directory.
"""

import json
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from grpo_jax.models import hf_llama, model as M
from llama_numpy import Sizes, numpy_forward, random_weights, rope_adjacent, rope_half

S = Sizes(vocab=50, width=32, heads=4, kv_heads=2, mlp=48, layers=2, eps=1e-5, theta=500.0)
CTX = 32
TOKENS = np.array([3, 17, 49, 0, 22, 8, 31, 5, 44, 12], np.int32)

# Role (tests/llama_numpy.py) -> Hugging Face name in layer i, written out here.
HF_LAYER = {
    "attn_norm": "input_layernorm",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def hf_config(tied=True, **overrides):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": S.vocab,
        "hidden_size": S.width,
        "num_hidden_layers": S.layers,
        "num_attention_heads": S.heads,
        "num_key_value_heads": S.kv_heads,
        "intermediate_size": S.mlp,
        "rms_norm_eps": S.eps,
        "rope_theta": S.theta,
        "rope_scaling": None,
        "tie_word_embeddings": tied,
        "max_position_embeddings": CTX,
        "hidden_act": "silu",
        **overrides,
    }


def hf_tensors(w):
    """``w`` (tests/llama_numpy.py's roles) under Hugging Face names, as stored."""
    t = {"model.embed_tokens.weight": w["embed"], "model.norm.weight": w["final_norm"]}
    if "head" in w:
        t["lm_head.weight"] = w["head"]
    for i, lw in enumerate(w["layers"]):
        t.update({f"model.layers.{i}.{HF_LAYER[r]}.weight": a for r, a in lw.items()})
    return t


def write_checkpoint(directory, w, *, shards=1, dtype=np.float32, **config):
    """Write ``w`` as a checkpoint directory; returns ``w`` as stored (rounded to ``dtype``)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(hf_config(tied="head" not in w, **config), fh)
    tensors = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in hf_tensors(w).items()}
    if shards == 1:
        save_file(tensors, os.path.join(directory, "model.safetensors"))
    else:
        names = sorted(tensors)
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k] for k in part}, os.path.join(directory, fname))
            weight_map.update({k: fname for k in part})
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    f32 = lambda a: np.asarray(a.astype(dtype), np.float32)
    return {
        k: ([{r: f32(a) for r, a in lw.items()} for lw in v] if k == "layers" else f32(v))
        for k, v in w.items()
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tied = write_checkpoint(str(root / "tied"), random_weights(S, 0), shards=2)
    untied = write_checkpoint(
        str(root / "untied"), random_weights(S, 1, untied=True), dtype=ml_dtypes.bfloat16
    )
    return {"tied": (str(root / "tied"), tied), "untied": (str(root / "untied"), untied)}


def logits(directory, **kw):
    cfg, params, _ = hf_llama.load(directory, **kw)
    return cfg, params, np.asarray(M.forward(cfg, params, jnp.asarray(TOKENS[None])))[0]


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["tied", "untied"])
def test_logits_match_numpy_forward(checkpoints, case):
    directory, stored = checkpoints[case]
    cfg, params, ours = logits(directory)
    assert cfg == M.ModelConfig(
        vocab_size=S.vocab,
        num_layers=S.layers,
        width=S.width,
        num_heads=S.heads,
        mlp_width=S.mlp,
        max_len=CTX,
        rope_theta=S.theta,
        num_kv_heads=S.kv_heads,
        tie_embeddings=case == "tied",
        norm_eps=cfg.norm_eps,
    )
    assert cfg.norm_eps == pytest.approx(S.eps)
    assert ("head" in params) == (case == "untied")
    ref = numpy_forward(stored, TOKENS, S, rope_half)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 0.5  # not a trivially small comparison
    # The rows are used as stored: the same weights under adjacent-pair RoPE (what a GGUF
    # loader's row order would need) are another model, which the comparison tells apart.
    assert np.abs(numpy_forward(stored, TOKENS, S, rope_adjacent) - ours).max() > 1e-2


def test_bfloat16_file_loads_exact_values_and_bfloat16_compute(checkpoints):
    directory, stored = checkpoints["untied"]
    assert hf_llama.read_tensors(directory)["lm_head.weight"].dtype == ml_dtypes.bfloat16
    _, params, _ = hf_llama.load(directory)
    q = np.asarray(params["blocks"][0]["attn"]["q"]["kernel"][...])
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q, stored["layers"][0]["q"].T)
    cfg, _, ours = logits(directory, dtype="bfloat16", max_len=16)
    assert cfg.dtype == "bfloat16" and cfg.max_len == 16
    ref = numpy_forward(stored, TOKENS, S, rope_half)
    err = np.abs(ours - ref).max()
    assert 0 < err < 0.1 * np.abs(ref).max()


def test_transformers_forward_agrees(checkpoints):
    """transformers' LlamaForCausalLM reads the same directory (index and shards included)
    and computes the same logits."""
    torch = pytest.importorskip("torch", reason="torch not installed: no transformers check")
    transformers = pytest.importorskip(
        "transformers", reason="transformers not installed: no transformers check"
    )
    for case in ("tied", "untied"):
        directory, _ = checkpoints[case]
        hf = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
        with torch.no_grad():
            theirs = hf(torch.as_tensor(TOKENS[None]).long()).logits[0].float().numpy()
        np.testing.assert_allclose(logits(directory)[2], theirs, atol=1e-4, rtol=0)


def test_refusals_name_the_problem(checkpoints, tmp_path):
    directory, _ = checkpoints["tied"]
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        hf_llama.load(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf_llama.load(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        hf_llama.read_tensors(str(tmp_path / "empty"))
    hf = hf_config()
    cases = [
        ({"architectures": ["MistralForCausalLM"]}, "unsupported architectures.*Mistral"),
        ({"model_type": "mistral"}, "unsupported model_type 'mistral'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.*llama3"),
        ({"attention_bias": True}, "attention_bias"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            hf_llama.model_config_from_hf({**hf, **change})
    with pytest.raises(ValueError, match="'intermediate_size' missing"):
        hf_llama.model_config_from_hf({k: v for k, v in hf.items() if k != "intermediate_size"})
    # A checkpoint with rope_scaling in its config.json is refused on load, naming the key.
    scaled = tmp_path / "scaled"
    write_checkpoint(
        str(scaled), random_weights(S, 2), rope_scaling={"type": "linear", "factor": 2}
    )
    with pytest.raises(ValueError, match="config.json: rope_scaling"):
        hf_llama.load(str(scaled))

    cfg = hf_llama.model_config_from_hf(hf)
    tensors = hf_llama.read_tensors(directory)
    k0 = "model.layers.0.self_attn.k_proj.weight"
    with pytest.raises(ValueError, match=r"missing tensor.*model\.layers\.1\.mlp\.down_proj"):
        hf_llama.params_from_tensors(
            cfg, {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.down_proj.weight"}
        )
    # Transposed (k_proj is [16, 32]: a permuted layout shows in its shape) or cut short.
    with pytest.raises(ValueError, match=rf"'{k0}' has shape \(32, 16\), expected \(16, 32\)"):
        hf_llama.params_from_tensors(cfg, {**tensors, k0: tensors[k0].T})
    v1 = "model.layers.1.self_attn.v_proj.weight"
    with pytest.raises(ValueError, match=rf"'{v1}' has shape \(8, 32\), expected \(16, 32\)"):
        hf_llama.params_from_tensors(cfg, {**tensors, v1: tensors[v1][:8]})
    with pytest.raises(ValueError, match=r"no place for.*self_attn\.q_proj\.bias"):
        hf_llama.params_from_tensors(
            cfg, {**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}
        )
    with pytest.raises(ValueError, match="'lm_head.weight' is not a copy"):
        hf_llama.params_from_tensors(cfg, {**tensors, "lm_head.weight": tensors[k0][:1]})
    # A tied checkpoint that also saves its head as a copy, and old rotary buffers, load.
    extra = {
        "lm_head.weight": tensors["model.embed_tokens.weight"],
        "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32),
    }
    params = hf_llama.params_from_tensors(cfg, {**tensors, **extra})
    assert "head" not in params
    # An index naming a shard that is not there.
    index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))
    broken = tmp_path / "broken"
    broken.mkdir()
    with open(broken / "model.safetensors.index.json", "w") as fh:
        json.dump(index, fh)
    with pytest.raises(FileNotFoundError, match="shard 'model-00001-of-00002.safetensors'"):
        hf_llama.read_tensors(str(broken))


def test_grpo_config_takes_its_reference_from_a_safetensors_dir(tmp_path):
    """`config.reference.safetensors_dir`: the checkpoint's config.json is the run's model
    and its weights the reference and the policy's start, with no pretraining; a checkpoint
    of another vocabulary, or set together with reference.checkpoint, is refused."""
    import jax  # noqa: PLC0415

    from grpo_jax.run import build, reference  # noqa: PLC0415
    from train_helpers import tiny_config  # noqa: PLC0415

    config = tiny_config(steps=1, chunk=1)
    task = build.make_task(config)
    sizes = Sizes(task.vocab_size, 16, 2, 1, 24, 1, 1e-6, 10000.0)
    directory = str(tmp_path / "ref")
    stored = write_checkpoint(
        directory,
        random_weights(sizes, 3),
        vocab_size=task.vocab_size,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=24,
        num_hidden_layers=1,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
    )
    config.reference.safetensors_dir = directory
    build.validate_config(config)
    mcfg = build.make_model_config(config, task)
    assert (mcfg.width, mcfg.num_layers, mcfg.kv_heads, mcfg.tie_embeddings) == (16, 1, 1, True)
    assert mcfg.max_len == task.prompt_len + task.completion_len
    logs = []
    _, _, state, _ = build.build_population(config, [{}], log=logs.append)
    assert logs == [f"reference loaded from {directory}"]  # loaded, not pretrained
    for params in (state.ref_params, state.params):  # the policy starts at the reference
        embed = np.asarray(jax.tree.map(lambda x: x[0], params)["embed"]["embedding"][...])
        np.testing.assert_array_equal(embed, stored["embed"])
    config.reference.checkpoint = str(tmp_path)
    with pytest.raises(ValueError, match=r"config\.reference\.safetensors_dir: .* both set"):
        build.validate_config(config)
    config.reference.checkpoint = ""
    other = str(tmp_path / "other")
    write_checkpoint(other, random_weights(S, 4))
    config.reference.safetensors_dir = other
    with pytest.raises(ValueError, match=f"vocab_size {S.vocab} is not the task's"):
        reference.safetensors_model_config(config, task)
