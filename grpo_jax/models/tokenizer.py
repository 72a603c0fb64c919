"""The tokenizer and chat template of a GGUF file (``tokenizer.ggml.*`` metadata).

    tok = tokenizer.from_gguf(path)            # or from_metadata(gguf.read_metadata(path))
    ids = tok.encode("Hello")                  # list[int]
    text = tok.decode(ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    ids = tok.encode(prompt)                   # special tokens matched literally

Only ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE, what SmolLM2 and Llama-3 use) is
supported. It is built with the ``tokenizers`` library from the file's own vocabulary
(``tokenizer.ggml.tokens``, ids in file order), merges (``tokenizer.ggml.merges``, "a b"
strings, rank = position) and token types (``tokenizer.ggml.token_type``: 3 = control,
4 = user-defined; these become special tokens, matched whole in the input and never split).

Pre-tokenisation follows ``tokenizer.ggml.pre`` as llama.cpp does (``llama-vocab.cpp``):
``smollm`` first splits every digit on its own (``\\p{N}``), then applies the GPT-2 regex,
which is Hugging Face's ``Sequence([Digits(individual_digits=True), ByteLevel(use_regex=True)])``
of SmolLM2's ``tokenizer.json``; ``gpt2`` / ``default`` is the GPT-2 regex alone. Any other
``pre`` is a ValueError (the regexes differ and a silent fallback would mis-tokenise).

The chat template (``tokenizer.chat_template``, Jinja) is rendered with jinja2 the way
``transformers`` does: a sandboxed environment, ``trim_blocks`` and ``lstrip_blocks``,
``raise_exception``, and the variables ``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``.
"""

from __future__ import annotations

from typing import Any, Sequence

CONTROL, USER_DEFINED = 3, 4
SUPPORTED_PRE = ("smollm", "gpt2", "default")


class GGUFTokenizer:
    """A ``tokenizers.Tokenizer`` plus the file's special ids and chat template."""

    def __init__(self, meta: dict[str, Any], where: str = "GGUF"):
        import tokenizers  # pylint: disable=import-outside-toplevel
        from tokenizers import decoders, models, pre_tokenizers

        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(
                f"{where}: tokenizer.ggml.model {model!r} is not supported "
                "(only 'gpt2', byte-level BPE)"
            )
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in SUPPORTED_PRE:
            raise ValueError(
                f"{where}: tokenizer.ggml.pre {pre!r} is not supported "
                f"(supported: {SUPPORTED_PRE})"
            )
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise ValueError(f"{where}: metadata key {key!r} missing")
        tokens = list(meta["tokenizer.ggml.tokens"])
        types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        if len(types) != len(tokens):
            raise ValueError(f"{where}: {len(tokens)} tokens but {len(types)} token types")
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError(f"{where}: tokenizer.ggml.tokens has duplicate entries")
        merges = []
        for m in meta["tokenizer.ggml.merges"]:
            a, sep, b = m.partition(" ")
            if not sep:
                raise ValueError(f"{where}: malformed merge {m!r}")
            merges.append((a, b))
        self.tokens = tokens
        self.token_types = types
        self.pre = pre
        bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
        tok = tokenizers.Tokenizer(bpe)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            tok.pre_tokenizer = byte_level
        tok.decoder = decoders.ByteLevel()
        self.special_ids = tuple(i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED))
        tok.add_special_tokens(
            [
                tokenizers.AddedToken(tokens[i], special=True, normalized=False)
                for i in self.special_ids
            ]
        )
        self._tok = tok
        self.bos_id = meta.get("tokenizer.ggml.bos_token_id")
        self.eos_id = meta.get("tokenizer.ggml.eos_token_id")
        self.pad_id = meta.get("tokenizer.ggml.padding_token_id")
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        self.chat_template = meta.get("tokenizer.chat_template")
        for name in ("bos_id", "eos_id"):
            i = getattr(self, name)
            if i is not None and not 0 <= int(i) < len(tokens):
                raise ValueError(f"{where}: {name} {i} outside the vocabulary")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def tokenizer(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` (special tokens in the text are single ids). A BOS id is
        prepended when ``add_bos`` (default: the file's ``add_bos_token``)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [int(self.bos_id)] + ids
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True, **extra
    ) -> str:
        """The file's chat template rendered for ``messages`` (a string; ``encode`` it)."""
        if not self.chat_template:
            raise ValueError("this GGUF file has no tokenizer.chat_template")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.tokens[self.bos_id] if self.bos_id is not None else "",
            eos_token=self.tokens[self.eos_id] if self.eos_id is not None else "",
            **extra,
        )


def render_chat_template(
    template: str,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    **variables,
) -> str:
    """Render a Jinja chat template as ``transformers`` does (sandboxed, trim_blocks,
    lstrip_blocks, ``raise_exception``)."""
    import jinja2  # pylint: disable=import-outside-toplevel
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
    )


def from_metadata(meta: dict[str, Any], where: str = "GGUF") -> GGUFTokenizer:
    return GGUFTokenizer(meta, where)


def from_gguf(path: str) -> GGUFTokenizer:
    from grpo_jax.models import gguf  # pylint: disable=import-outside-toplevel

    return GGUFTokenizer(gguf.read_metadata(path), where=path)
