"""IncrementalDecoder: increments that never split a character, Rust and Python alike."""

from __future__ import annotations

import random

import pytest

from workers.llm import IncrementalDecoder, LoadedModel

TEXT = "Café ✓ 🚀 日本語 é — done"


class SlowTokenizer:
    """A tokenizer without a Rust backend (like transformers' slow ones): only `decode`."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def decode(self, ids, **kwargs) -> str:
        return self._tokenizer.decode(ids, **kwargs)


def decode_all(tokenizer, ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tokenizer)
    return [*(decoder.push(i) for i in ids), decoder.flush()]


@pytest.fixture(params=["rust", "python"])
def tokenizer(request: pytest.FixtureRequest, tiny: LoadedModel):
    return tiny.tokenizer if request.param == "rust" else SlowTokenizer(tiny.tokenizer)


def test_never_splits_a_character(tokenizer, tiny: LoadedModel) -> None:
    ids = tiny.tokenizer.encode(TEXT, add_special_tokens=False)
    pieces = decode_all(tokenizer, ids)
    assert "" in pieces[:-1], "expected some multi-byte characters to be held back"
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == TEXT


def test_flushes_an_unfinished_character_at_the_end(tokenizer, tiny: LoadedModel) -> None:
    ids = tiny.tokenizer.encode("ok 🚀", add_special_tokens=False)[:-1]  # last byte missing
    pieces = decode_all(tokenizer, ids)
    assert "".join(pieces[:-1]) == "ok"
    assert pieces[-1].endswith("\ufffd")


def test_skips_special_tokens(tokenizer, tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    ids = [tok.bos_token_id, *tok.encode("a b", add_special_tokens=False), tok.eos_token_id]
    assert "".join(decode_all(tokenizer, ids)) == "a b"


def test_rust_and_python_agree_on_random_ids(tiny: LoadedModel) -> None:
    # Random ids over a byte-level vocabulary: split and invalid UTF-8 everywhere.
    tok = tiny.tokenizer
    ids = random.Random(0).choices(range(len(tok)), k=2000)
    fast, slow = decode_all(tok, ids), decode_all(SlowTokenizer(tok), ids)
    assert fast == slow
    assert "".join(fast) == tok.decode(
        ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    assert not any(p.endswith("\ufffd") for p in fast[:-1])
