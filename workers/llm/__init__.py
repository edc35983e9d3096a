"""The generate worker's model runtime: loading, prompting, streaming, code extraction.

Imports torch and transformers. Only the generate worker may import this package, and
only lazily (inside the task), so the API and the execute worker never load torch.
"""

from workers.llm.bundled import bundled_model_dir, ensure_bundled_model
from workers.llm.codeblocks import CodeBlock, extract_code, find_code_blocks
from workers.llm.decoding import IncrementalDecoder
from workers.llm.errors import ModelLoadError, PromptTooLongError
from workers.llm.languages import LANGUAGES, LanguageProfile, language_profile
from workers.llm.loading import (
    BUNDLED_MODEL_ID,
    GPU_MODEL_ID,
    LoadedModel,
    load_model_with_gpu,
    resolve_model_id,
)
from workers.llm.prompts import code_messages
from workers.llm.streaming import (
    GenerationOutcome,
    SamplingParams,
    generate_stream,
    generate_text,
)
from workers.llm.tiny import build_tiny_model

__all__ = [
    "BUNDLED_MODEL_ID",
    "GPU_MODEL_ID",
    "LANGUAGES",
    "CodeBlock",
    "GenerationOutcome",
    "IncrementalDecoder",
    "LanguageProfile",
    "LoadedModel",
    "ModelLoadError",
    "PromptTooLongError",
    "SamplingParams",
    "build_tiny_model",
    "bundled_model_dir",
    "code_messages",
    "ensure_bundled_model",
    "extract_code",
    "find_code_blocks",
    "generate_stream",
    "generate_text",
    "language_profile",
    "load_model_with_gpu",
    "resolve_model_id",
]
