"""A tiny random causal LM plus a freshly trained tokenizer, for tests and benchmarks.

Nothing may be downloaded at test time, yet tests should exercise the production
loading path. `build_tiny_model` writes an ordinary Hugging Face model folder
(byte-level BPE tokenizer with a ChatML template, random 2-layer Llama or GPT-2) that
`load_model_with_gpu(str(path), device="cpu")` loads like any hub checkpoint.
Input and output embeddings are untied on purpose: with tied random embeddings every
token predicts itself and greedy output is one token repeated, which hides bugs.

The text it generates is garbage: assert on structure (lengths, finish reasons,
UTF-8 safety), never on content. The corpus has a few accented letters, emoji and CJK
that the small default vocabulary leaves unmerged, so they decode from several byte
tokens, which is what the streaming tests need (a test pins this).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, "<|im_start|>", EOS, PAD]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "function add(a, b) {\n  return a + b;\n}\nconsole.log(add(1, 2));\n",
    "const xs = [1, 2, 3].map((x) => x * 2);\n",
    "export function greet(name: string): string {\n  return `Hello, ${name}`;\n}\n",
    "public class Main {\n  public static void main(String[] args) {\n"
    '    System.out.println("hi");\n  }\n}\n',
    "import React from 'react';\nexport default function App() {\n"
    '  return <div className="p-4 text-lg">Hello</div>;\n}\n',
    "Write a Python function that reverses a string.\n",
    "Here is the code:\n```python\nprint('hello world')\n```\n",
    "You are a helpful coding assistant. Answer with one fenced code block.\n",
    "Café, naïve, résumé: déjà vu. Ünïcödé ✓ 🚀 日本語\n",
]


def build_tiny_model(
    path: Path,
    *,
    arch: Literal["llama", "gpt2"] = "llama",
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny tokenizer + random model into `path` (created if missing); return it.

    Deterministic for a given (arch, vocab_size, seed); takes well under a second.
    """
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    tokenizer.save_pretrained(path)
    vocab = tokenizer.get_vocab()
    ids = {tok: vocab[tok] for tok in (BOS, EOS, PAD)}
    # fork_rng keeps the caller's global RNG untouched while making weights repeatable.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _random_model(arch, len(tokenizer), ids[BOS], ids[EOS], ids[PAD])
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD]
    )
    model.save_pretrained(path)
    return path


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS * 3, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def _random_model(
    arch: str, vocab: int, bos: int, eos: int, pad: int
) -> LlamaForCausalLM | GPT2LMHeadModel:
    if arch == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=4096,
                tie_word_embeddings=False,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        )
    if arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_positions=4096,
                tie_word_embeddings=False,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        )
    raise ValueError(f"unknown tiny architecture {arch!r} (expected 'llama' or 'gpt2')")
