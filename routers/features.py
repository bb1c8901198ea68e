"""Prompt -> feature vector, locally, in numpy.

`prompt_text` picks the text a router sees from an OpenAI-style chat request (the last user
message by default). `HashingFeaturizer` maps texts to a float32 matrix: hashed word
1-2-grams and character n-grams (log counts, each block L2-normalised) followed by a few
structural features (length, digits, maths, code, questions, turns). No vocabulary, no network:
the same text always gives the same vector, in any process (the hashes are not Python's `hash`).
Optionally (`static_embedding`) a static word embedding of the text (`routers.embedding`) sits
between the char block and the structural features: the N-model default router uses it.

The featurizer is swappable: anything with `dim`, `spec()` and `transform(texts)` fits
(`Featurizer`). Routers store `spec()` in their artifact and rebuild the featurizer on load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from routers.embedding import EMBEDDINGS, static_embedding

__all__ = [
    "STRUCTURAL_NAMES",
    "Featurizer",
    "HashingFeaturizer",
    "HashingParams",
    "featurizer_from_spec",
    "prompt_text",
    "structural_features",
]

FloatMatrix = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "\n".join(parts)


def prompt_text(
    messages: Sequence[Mapping[str, Any]],
    *,
    include_system: bool = False,
    include_history: bool = False,
) -> str:
    """The text a router scores, from OpenAI chat-format messages.

    Default: the last user message. `include_history` adds every earlier user/assistant turn;
    `include_system` adds the system (and developer) prompts. Parts that are not text (images,
    audio) are ignored. Returns "" when there is no user message.
    """
    last_user = -1
    for i, message in enumerate(messages):
        if message.get("role") == "user":
            last_user = i
    if last_user < 0:
        return ""
    chosen: list[str] = []
    for i, message in enumerate(messages[: last_user + 1]):
        role = message.get("role")
        if role in ("system", "developer"):
            keep = include_system
        elif i == last_user:
            keep = True
        else:
            keep = include_history and role in ("user", "assistant")
        if keep:
            text = _content_text(message.get("content"))
            if text:
                chosen.append(text)
    return "\n\n".join(chosen)


class Featurizer(Protocol):
    """Maps texts to a float32 matrix of shape (len(texts), dim)."""

    @property
    def dim(self) -> int: ...

    @property
    def embedding_columns(self) -> slice:
        """The columns of a static embedding (unit rows), if any: an empty slice."""
        ...

    def spec(self) -> dict[str, Any]:
        """JSON-able description from which `featurizer_from_spec` rebuilds it."""
        ...

    def transform(self, texts: Sequence[str]) -> FloatMatrix: ...


STRUCTURAL_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "digit_frac",
    "upper_frac",
    "math_per_100_chars",
    "code_per_100_chars",
    "log_question_marks",
    "log_lines",
    "mean_word_len",
    "log_paragraphs",
)


def _byte_table(chars: str) -> npt.NDArray[np.bool_]:
    table = np.zeros(256, dtype=bool)
    table[list(chars.encode("ascii"))] = True
    return table


_DIGIT = _byte_table("0123456789")
_UPPER = _byte_table("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACE = _byte_table(" \t\n\r\x0b\x0c")
_MATH = _byte_table("=+*/^<>$\\")
_CODE = _byte_table("{}[];`_")
# Word bytes: ASCII letters, digits, '_' and every byte of a multi-byte UTF-8 character.
_WORD = _byte_table("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_WORD[128:] = True


def _utf8(text: str) -> npt.NDArray[np.uint8]:
    return np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)


# Columns: space, digit, upper, maths, code, '?', newline; rows: byte values.
_CLASS = np.stack(
    [_SPACE, _DIGIT, _UPPER, _MATH, _CODE, _byte_table("?"), _byte_table("\n")], axis=1
).astype(np.float64)


def _structural_batch(
    raws: Sequence[bytes], n_words: Sequence[int], n_para: Sequence[int]
) -> npt.NDArray[np.float64]:
    """Shape features, shape (len(raws), len(STRUCTURAL_NAMES)), from each text's UTF-8 bytes,
    its whitespace-separated word count and its count of blank-line breaks."""
    n = len(raws)
    lens = np.fromiter((len(r) for r in raws), np.intp, n)
    raw = np.frombuffer(b"".join(raws), dtype=np.uint8)
    tid = np.repeat(np.arange(n), lens)
    counts = np.bincount(tid * 256 + raw, minlength=n * 256).reshape(n, 256)
    space, digit, upper, maths, code, qmark, newline = (counts @ _CLASS).T
    words = np.asarray(n_words, dtype=np.float64)
    n_chars = lens.astype(np.float64)
    denom = np.maximum(n_chars, 1.0)
    out = np.empty((n, len(STRUCTURAL_NAMES)))
    out[:, 0] = np.log1p(n_chars)
    out[:, 1] = np.log1p(words)
    out[:, 2] = digit / denom
    out[:, 3] = upper / denom
    out[:, 4] = 100.0 * maths / denom
    out[:, 5] = 100.0 * code / denom
    out[:, 6] = np.log1p(qmark)
    out[:, 7] = np.log1p(newline)
    out[:, 8] = (n_chars - space) / np.maximum(words, 1.0) / 10.0
    out[:, 9] = np.log1p(np.asarray(n_para, dtype=np.float64))
    return out


def structural_features(text: str) -> list[float]:
    """Cheap shape features of one text, in the order of `STRUCTURAL_NAMES`."""
    raw = text.encode("utf-8", "replace")
    feats = _structural_batch([raw], [len(text.split())], [text.count("\n\n")])
    row: list[float] = feats[0].tolist()
    return row


@dataclass(frozen=True, slots=True)
class HashingParams:
    """Parameters of `HashingFeaturizer`. `word_dim` and `char_dim` are powers of two."""

    word_dim: int = 4096
    char_dim: int = 4096
    char_ngram_min: int = 3
    char_ngram_max: int = 5
    word_bigrams: bool = True
    structural: bool = True
    max_chars: int = 8000  # longer prompts are cut (head + tail) before hashing
    seed: int = 0
    # "" (none) or a name in `routers.embedding.EMBEDDINGS`: a static word embedding of the
    # (clipped) text, unit length, between the char block and the structural features
    static_embedding: str = ""

    def __post_init__(self) -> None:
        for name, value in (("word_dim", self.word_dim), ("char_dim", self.char_dim)):
            if value < 2 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value}")
        if not 1 <= self.char_ngram_min <= self.char_ngram_max <= 8:
            raise ValueError("need 1 <= char_ngram_min <= char_ngram_max <= 8")
        if self.max_chars < 16:
            raise ValueError("max_chars must be at least 16")
        if self.static_embedding and self.static_embedding not in EMBEDDINGS:
            raise ValueError(
                f"unknown static_embedding {self.static_embedding!r}; known: {sorted(EMBEDDINGS)}"
            )


_M1 = np.uint32(0x9E3779B1)
_M2 = np.uint32(0x85EBCA6B)
_M3 = np.uint32(0xC2B2AE35)
_POW = np.cumprod(np.full(64, 0x01000193, dtype=np.uint32), dtype=np.uint32)


def _mix(h: npt.NDArray[np.uint32], salt: int) -> npt.NDArray[np.uint32]:
    """A murmur3-style finaliser: spreads the bits of `h` (uint32, wrapping arithmetic)."""
    h = h ^ np.uint32(salt & 0xFFFFFFFF)
    h = h ^ (h >> np.uint32(16))
    h = h * _M2
    h = h ^ (h >> np.uint32(13))
    h = h * _M3
    h = h ^ (h >> np.uint32(16))
    return h


_Hashes = tuple[npt.NDArray[np.uint32], npt.NDArray[np.intp]]


def _l2_rows(block: FloatMatrix) -> None:
    """Scale each row of `block` (a view) to unit L2 norm, in place; zero rows stay zero."""
    norm = np.sqrt(np.einsum("ij,ij->i", block, block))
    block /= np.where(norm > 0, norm, 1.0)[:, None]


_CHUNK = 48  # texts per vectorised pass: keeps the count matrix in cache
_LOG1P = np.log1p(np.arange(1024, dtype=np.float64)).astype(np.float32)


class HashingFeaturizer:
    """Hashed word 1-2-grams + char n-grams (log counts, each block L2-normalised) +
    structural features, vectorised in numpy over a batch of texts."""

    kind = "hashing"

    def __init__(self, params: HashingParams | None = None) -> None:
        self.params = params or HashingParams()
        p = self.params
        self._n_struct = len(STRUCTURAL_NAMES) if p.structural else 0
        self._embedding = static_embedding(p.static_embedding) if p.static_embedding else None
        self._n_embed = self._embedding.dim if self._embedding is not None else 0
        self._dim = self.sparse_dim + self._n_struct

    @property
    def sparse_dim(self) -> int:
        """The columns before the structural features: the hashed blocks (log counts) and the
        static embedding, each of unit length; the structural columns after them are the ones
        to standardise."""
        return self.params.word_dim + self.params.char_dim + self._n_embed

    @property
    def embedding_columns(self) -> slice:
        """Where the static embedding sits (an empty slice without one)."""
        start = self.params.word_dim + self.params.char_dim
        return slice(start, start + self._n_embed)

    @property
    def dim(self) -> int:
        return self._dim

    def spec(self) -> dict[str, Any]:
        p = self.params
        return {
            "kind": self.kind,
            "word_dim": p.word_dim,
            "char_dim": p.char_dim,
            "char_ngram_min": p.char_ngram_min,
            "char_ngram_max": p.char_ngram_max,
            "word_bigrams": p.word_bigrams,
            "structural": p.structural,
            "max_chars": p.max_chars,
            "seed": p.seed,
            "static_embedding": p.static_embedding,
        }

    def _clip(self, text: str) -> str:
        limit = self.params.max_chars
        if len(text) <= limit:
            return text
        half = limit // 2
        return text[:half] + " " + text[-half:]

    def _joined(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.uint32], Floats]:
        """Lower-cased texts with whitespace runs as one space, joined by NUL bytes (one before
        the first text, one after the last); and the structural features of each text."""
        raws: list[bytes] = []
        flat: list[bytes] = []
        n_words: list[int] = []
        n_para: list[int] = []
        for text in texts:
            clipped = self._clip(text).replace("\x00", " ")
            words = clipped.lower().split()
            raws.append(clipped.encode("utf-8", "replace"))
            flat.append(" ".join(words).encode("utf-8", "replace"))
            n_words.append(len(words))
            n_para.append(clipped.count("\n\n"))
        joined = b"\x00" + b"\x00".join(flat) + b"\x00"
        structural = (
            _structural_batch(raws, n_words, n_para) if self._n_struct else np.empty((0, 0))
        )
        return np.frombuffer(joined, dtype=np.uint8).astype(np.uint32), structural

    def _words(self, cb: npt.NDArray[np.uint32], tid: npt.NDArray[np.intp]) -> _Hashes:
        """Tokens are runs of word bytes and single punctuation bytes; 1-grams and 2-grams."""
        p = self.params
        isw = _WORD[cb]
        start = isw.copy()
        start[1:] &= ~isw[:-1]
        wpos = np.flatnonzero(isw)
        if len(wpos):
            seg = np.flatnonzero(start[wpos])
            word_start = wpos[seg]
            offset = wpos - np.repeat(word_start, np.diff(np.append(seg, len(wpos))))
            powers = _POW[np.minimum(offset, len(_POW) - 1)]
            word_h = np.add.reduceat(cb[wpos] * powers, seg).astype(np.uint32)
        else:
            word_start = wpos
            word_h = np.empty(0, dtype=np.uint32)
        punct = np.flatnonzero(~isw & (cb != 32) & (cb != 0))
        pos = np.concatenate([word_start, punct])
        order = np.argsort(pos, kind="stable")
        h = np.concatenate([word_h, cb[punct] * _M2])[order]
        owner = tid[pos[order]]
        if p.word_bigrams and len(h) > 1:
            same = owner[:-1] == owner[1:]
            h = np.concatenate([h, (h[:-1] * _M1 ^ h[1:])[same]])
            owner = np.concatenate([owner, owner[:-1][same]])
        return h, owner

    def _chars(self, cb: npt.NDArray[np.uint32], tid: npt.NDArray[np.intp]) -> _Hashes:
        """Character n-grams; the NUL separators count as spaces at each text's ends."""
        p = self.params
        vals = np.where(cb == 0, np.uint32(32), cb)
        hashes: list[npt.NDArray[np.uint32]] = []
        owners: list[npt.NDArray[np.intp]] = []
        h = vals
        for k in range(1, p.char_ngram_max + 1):
            if k > 1:
                if len(vals) < k:
                    break
                h = h[:-1] * _M1 + vals[k - 1 :]
            if k >= p.char_ngram_min:
                owner = tid[: len(h)]
                # An n-gram is inside one text when no separator sits strictly inside it.
                valid = owner == tid[k - 2 : k - 2 + len(h)] if k > 1 else cb[: len(h)] != 0
                hashes.append(h[valid] + np.uint32(k))
                owners.append(owner[valid])
        if not hashes:
            return np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.intp)
        return np.concatenate(hashes), np.concatenate(owners)

    def _transform_chunk(self, texts: Sequence[str]) -> FloatMatrix:
        p = self.params
        n = len(texts)
        cb, structural = self._joined(texts)
        # tid: the text each byte belongs to; a separator belongs to the text after it.
        tid = np.cumsum(cb == 0) - 1
        word_h, word_owner = self._words(cb, tid)
        char_h, char_owner = self._chars(cb, tid)
        width = p.word_dim + p.char_dim
        # One hash pass and one count for both blocks: words in [0, word_dim), chars after.
        h = _mix(np.concatenate([word_h, char_h]), p.seed)
        col = h & np.uint32(p.word_dim - 1)
        col[len(word_h) :] = (h[len(word_h) :] & np.uint32(p.char_dim - 1)) + np.uint32(p.word_dim)
        owner = np.concatenate([word_owner, char_owner])
        counts = np.bincount(owner * width + col, minlength=n * width).reshape(n, width)
        out = np.empty((n, self._dim), dtype=np.float32)
        out[:, :width] = _LOG1P[np.minimum(counts, len(_LOG1P) - 1)]
        _l2_rows(out[:, : p.word_dim])
        _l2_rows(out[:, p.word_dim : width])
        if self._embedding is not None:
            out[:, self.embedding_columns] = self._embedding.embed([self._clip(t) for t in texts])
        if self._n_struct:
            out[:, self.sparse_dim :] = structural
        return out

    def transform_one(self, text: str) -> FloatMatrix:
        """Features of one text, shape (dim,)."""
        row: FloatMatrix = self._transform_chunk([text])[0]
        return row

    def transform(self, texts: Sequence[str]) -> FloatMatrix:
        """Features of each text, shape (len(texts), dim); a text's row does not depend on
        the other texts in the batch."""
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for lo in range(0, len(texts), _CHUNK):
            out[lo : lo + _CHUNK] = self._transform_chunk(texts[lo : lo + _CHUNK])
        return out


def featurizer_from_spec(spec: Mapping[str, Any]) -> HashingFeaturizer:
    """Rebuild a featurizer from its `spec()`; raises ValueError for an unknown kind."""
    kind = spec.get("kind")
    if kind != HashingFeaturizer.kind:
        raise ValueError(f"unknown featurizer kind {kind!r}")
    return HashingFeaturizer(
        HashingParams(
            word_dim=int(spec["word_dim"]),
            char_dim=int(spec["char_dim"]),
            char_ngram_min=int(spec["char_ngram_min"]),
            char_ngram_max=int(spec["char_ngram_max"]),
            word_bigrams=bool(spec["word_bigrams"]),
            structural=bool(spec["structural"]),
            max_chars=int(spec["max_chars"]),
            seed=int(spec["seed"]),
            # artifacts from before the static embedding have none
            static_embedding=str(spec.get("static_embedding", "")),
        )
    )
