"""Incremental detokenisation that never emits half a character.

Byte-level tokenizers spell a multi-byte character (é, emoji, CJK) over several tokens;
decoding a prefix of them yields U+FFFD. So text ending in U+FFFD is held back until a
later token completes it, or until `flush` at the end, where an unfinished character is
emitted as U+FFFD, which is what the full decode says too.

The algorithm (from TGI and vLLM) decodes a short window: the tokens of the previous
increment as context, plus the new ones, and emits what the new ones added. The
context matters because decoders apply rules at the start of a text (SentencePiece
drops the leading space of the first token). Cost per token is constant.

Fast tokenizers run the identical algorithm in Rust (`tokenizers.decoders.DecodeStream`,
one call per token); this module keeps the token offsets itself so that `flush` and
slow tokenizers use the Python version, and falls back to it if the Rust one errors.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenizers.decoders import DecodeStream

log = logging.getLogger(__name__)


class IncrementalDecoder:
    """Turns token ids, pushed one at a time, into text increments (see module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        # Only fast (Rust-backed) tokenizers have a backend; slow ones stay in Python.
        self._backend: Any = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = DecodeStream(skip_special_tokens=True) if self._backend else None
        self._ids: list[int] = []
        self._prefix = 0  # window start: the previous increment's tokens, as context
        self._read = 0  # tokens before this have been emitted
        self._prefix_text: str | None = ""  # decode(ids[prefix:read]); None: not computed

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        self._ids.append(token_id)
        if self._stream is not None:
            try:
                piece = self._stream.step(self._backend, token_id)
            except Exception as exc:  # e.g. DecodeStreamError::InvalidPrefix
                log.warning("DecodeStream failed (%s); decoding in Python from here", exc)
                self._stream = None
            else:
                if piece is None:
                    return ""
                self._prefix, self._read = self._read, len(self._ids)
                self._prefix_text = None
                return str(piece)
        return self._push_python()

    def flush(self) -> str:
        """Return whatever is still held back; call once, after the last token."""
        if self._read == len(self._ids):
            return ""
        piece = self._decode(self._prefix, len(self._ids))[len(self._context()) :]
        self._prefix = self._read = len(self._ids)
        self._prefix_text = ""
        return piece

    def _push_python(self) -> str:
        context = self._context()
        text = self._decode(self._prefix, len(self._ids))
        if len(text) <= len(context) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = None
        return text[len(context) :]

    def _context(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._prefix, self._read)
        return self._prefix_text

    def _decode(self, start: int, end: int) -> str:
        text: str = self._tokenizer.decode(
            self._ids[start:end], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text
