"""A static (context-free) word embedding of a prompt, locally, in numpy: the mean of its
tokens' vectors, unit length. Semantic where the hashing features are lexical: two prompts
about the same topic in different words land close, which is what the kernel routers need to
carry a model's strengths from a hundred labelled prompts to new ones.

The vectors are WordLlama's `l2_supercat` 256-d model (MIT, bundled in the `wordllama` wheel,
16 MB of float16; trained from the token-embedding codebooks of LLaMA 2 70B and other models
that share the LLaMA 2 tokenizer). Only its two files are read: the tokenizer (Hugging Face
`tokenizers`) and the weights (`safetensors`); nothing is downloaded and `wordllama` itself is
not imported. Loaded once per process.

A text is split on whitespace and each distinct chunk is tokenized once per process (a bounded
cache; the tokenizer is nearly all of the cost, `../shared/FEATURES.md`), so the tokens are
those of each word on its own. That is this embedding's definition, the same in training and
in serving. On the 14-model proxy of bench/n_model_small.py the nearest of 150 training prompts
shares the test prompt's MMLU subject 38% of the time, against 24% with the hashing features.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from functools import cache
from itertools import chain
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["EMBEDDINGS", "StaticEmbedding", "static_embedding"]

F32 = npt.NDArray[np.float32]
CACHE_CHUNKS = 100_000  # distinct whitespace chunks kept tokenized (then started afresh)

# name -> (package, tokenizer file, weights file), paths inside the package
EMBEDDINGS: dict[str, tuple[str, str, str]] = {
    "wordllama-l2-256": (
        "wordllama",
        "tokenizers/l2_supercat_tokenizer_config.json",
        "weights/l2_supercat_256.safetensors",
    ),
}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the static embedding needs the {package!r} package installed")
    return Path(next(iter(spec.submodule_search_locations)))


class StaticEmbedding:
    """Mean token vector of a text, unit length (a text without tokens: zeros)."""

    def __init__(self, name: str) -> None:
        if name not in EMBEDDINGS:
            raise ValueError(f"unknown static embedding {name!r}; known: {sorted(EMBEDDINGS)}")
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        package, tokenizer_file, weights_file = EMBEDDINGS[name]
        root = _package_dir(package)
        self.name = name
        self._tokenizer = Tokenizer.from_file(str(root / tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        (weights,) = load_file(str(root / weights_file)).values()
        self.vectors: F32 = np.ascontiguousarray(weights, dtype=np.float32)
        self.dim = int(self.vectors.shape[1])
        # a Tokenizer is not documented as safe to share between threads
        self._lock = threading.Lock()
        # whitespace chunk -> its token ids; tuples of ints, which the garbage collector stops
        # tracking, so a full cache adds nothing to a collection's pause
        self._chunks: dict[str, tuple[int, ...]] = {}

    def _ids(self, chunks: list[str]) -> npt.NDArray[np.intp]:
        cache = self._chunks
        try:
            known = [cache[c] for c in chunks]
        except KeyError:
            with self._lock:
                if len(cache) > CACHE_CHUNKS:  # a new dict: other threads keep the old one
                    self._chunks = cache = {}
                missing = [c for c in dict.fromkeys(chunks) if c not in cache]
                # the tokenizer refuses what is not UTF-8 (a lone surrogate from a JSON escape)
                safe = [c.encode("utf-8", "replace").decode("utf-8") for c in missing]
                encoded = self._tokenizer.encode_batch(safe, add_special_tokens=False)
            cache.update((c, tuple(enc.ids)) for c, enc in zip(missing, encoded, strict=True))
            known = [cache[c] for c in chunks]
        return np.fromiter(chain.from_iterable(known), dtype=np.intp)

    def embed(self, texts: Sequence[str]) -> F32:
        """(len(texts), dim) unit rows; a row depends only on its own text."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            ids = self._ids(text.split())
            if len(ids):
                v = np.take(self.vectors, ids, axis=0).mean(axis=0)
                norm = float(np.linalg.norm(v))
                out[i] = v / norm if norm > 0 else v
        return out


@cache
def static_embedding(name: str) -> StaticEmbedding:
    """The embedding `name`, loaded once per process."""
    return StaticEmbedding(name)
