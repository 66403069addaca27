"""The tiktoken build and an independent Hugging Face `tokenizers` build agree: the evidence the ids are exact.

The HF build has its own BPE engine, pre-tokenizer and added-token matcher; only the ranks are shared. Any error in
the regex, the added tokens or their special flags, or in deriving merges, shows up as a difference here.
"""

import functools
import random
import sysconfig
from pathlib import Path

from tokenizers import Tokenizer

from app.chat.render import render
from app.chat.tokenizer import build_hf_tokenizer, derive_merges, get_tokenizer, load_ranks


@functools.cache
def hf() -> Tokenizer:
    return build_hf_tokenizer()


def _corpus() -> list[str]:
    rng = random.Random(20250101)
    fixed = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog. I'LL say it's fine; they'd've DON'T.",
        "你好，世界！今天天气很好。我们去公园散步吧。日本語のテキストも少し。한국어 문장도.",
        "Emoji: 🎉🎉 👩‍👩‍👧‍👦 👍🏽 ❤️ 🇫🇷 and text",
        "Numbers 1234567890 3.14159 -42 1e-10 ١٢٣ ½ ⅔ 2025-01-01T12:00:00Z",
        "   leading spaces\n\n\n\ttabs\t\there\r\n\r\nwindows   \n  trailing   ",
        "def f(x: int) -> int:\n    return x ** 2  # square\n\n\nclass A:\n    pass\n",
        '{"key": [1, 2, 3], "nested": {"a": null}}\n',
        "Café, naïve, cafe\u0301, Å vs A\u030a, ﬁ ligature, ｆｕｌｌ width",
        "مرحبا بالعالم — नमस्ते दुनिया — สวัสดีชาวโลก — Привет, мир",
        "<|im_start|>user\nnot special<|im_end|> <think>yes</think> <tool_call>{}</tool_call> <|fim_prefix|>",
        "a  b   c    d\n \n  \n   x",
        "",
        " ",
        "\n",
    ]
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        " \t\n\r.,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`"
        "éèêëçñüößøåÆŒ你好世界中文字符日本語カタカナひらがな한국어ЖжЩщΩωαβγ"
        "\u0301\u0308\u200d🎉👍🏽❤️🇫🇷"
    )
    specials = ["<think>", "</think>", "<tool_call>", "<|im_end|>", "<|endoftext|>", "'s", "'LL", "\r\n"]
    generated = []
    for _ in range(1500):
        parts = []
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            if r < 0.6:
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
            elif r < 0.9:
                parts.append(" " * rng.randint(0, 3) + "\n" * rng.randint(0, 2))
            else:
                parts.append(rng.choice(specials))
        generated.append("".join(parts))
    tok = get_tokenizer()
    # Random vocabulary pieces glued together stress merge order more than natural text does.
    pieces = [tok.decode([rng.randrange(151643) for _ in range(rng.randint(1, 30))]) for _ in range(1500)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = [(stdlib / name).read_text(encoding="utf-8") for name in ("textwrap.py", "json/decoder.py")]
    return fixed + generated + pieces + sources


def test_merges_derived_from_ranks_are_one_per_multibyte_token():
    ranks = load_ranks()
    merges = derive_merges(ranks)
    assert len(merges) == 151643 - 256 == 151387
    assert all(a + b in ranks for a, b in merges[:1000])


def test_tiktoken_and_hf_tokenizers_agree_on_a_varied_corpus():
    corpus = _corpus()
    ours = get_tokenizer().encode_batch(corpus)
    theirs = [e.ids for e in hf().encode_batch(corpus, add_special_tokens=False)]
    mismatches = [text for text, a, b in zip(corpus, ours, theirs, strict=True) if a != b]
    assert mismatches == []
    assert sum(map(len, ours)) > 100_000


def _whole_template_ids(text: str) -> list[int]:
    """HF encoding of the whole chat text with special tokens recognised, like apply_chat_template(tokenize=True)."""
    tok = hf()
    tok.encode_special_tokens = False
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = True


def test_segment_encoding_equals_whole_string_encoding_for_typical_conversations():
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Write `x = 1` in Python.\n"},
        {"role": "assistant", "content": "x = 1  "},
        {"role": "user", "content": "  And in C?"},
        {"role": "assistant", "content": "int x = 1;", "reasoning_content": "C needs a type.\n"},
    ]
    text = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWrite `x = 1` in Python.\n<|im_end|>\n"
        "<|im_start|>assistant\nx = 1  <|im_end|>\n"
        "<|im_start|>user\n  And in C?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nC needs a type.\n</think>\n\nint x = 1;<|im_end|>\n"
    )
    assert render(conversation).tokens == _whole_template_ids(text)


def test_segment_encoding_differs_only_for_bodies_starting_with_a_newline():
    conversation = [{"role": "user", "content": "\n\nHi"}, {"role": "assistant", "content": "Hello"}]
    whole = _whole_template_ids(
        "<|im_start|>user\n\n\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"
    )
    rendered = render(conversation).tokens
    assert rendered[:3] == [151644, 872, 198]  # the header keeps its own "\n"
    assert whole[:3] == [151644, 872, 1406]  # whole-string BPE joins it with the body's "\n\n"
    assert get_tokenizer().decode(rendered) == get_tokenizer().decode(whole)
