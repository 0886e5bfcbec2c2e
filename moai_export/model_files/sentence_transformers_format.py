"""Read and write the sentence-transformers directory layout.

Reading derives an EmbeddingContract from modules.json, 1_Pooling/config.json,
config_sentence_transformers.json, sentence_bert_config.json and the tokenizer files, in
both the classic (v2-v5) and the v6 spellings. Writing uses the classic spelling: every
reader we ship to (sentence-transformers 2-6, vLLM's pooler loader, TEI) understands it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
SBERT_CONFIG_FILE = "sentence_bert_config.json"

# classic 1_Pooling/config.json flag -> our pooling name
_CLASSIC_POOLING_FLAGS = {
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}
_UNSUPPORTED_POOLING_FLAGS = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)
_V6_POOLING_NAMES = {"lasttoken": "lasttoken", "mean": "mean", "cls": "cls"}


def _read_json(path: Path, what: str) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MoaiError(f"{path.parent}: missing {path.name} ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MoaiError(f"{path}: not valid JSON ({exc})") from None


def _module_kind(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _read_pooling(path: Path) -> tuple[str, int | None, bool]:
    """(pooling mode, dims or None, include_prompt) from a Pooling module folder."""
    config = _read_json(path / "config.json", "pooling configuration")
    if "pooling_mode" in config:  # sentence-transformers 6
        name = config["pooling_mode"]
        if name not in _V6_POOLING_NAMES:
            raise MoaiError(f"{path}: pooling mode {name!r} is not supported (lasttoken, mean, cls are)")
        mode = _V6_POOLING_NAMES[name]
        dims = config.get("embedding_dimension")
    else:
        unsupported = [flag for flag in _UNSUPPORTED_POOLING_FLAGS if config.get(flag)]
        if unsupported:
            raise MoaiError(f"{path}: pooling {unsupported[0]} is not supported (lasttoken, mean, cls are)")
        modes = [mode for flag, mode in _CLASSIC_POOLING_FLAGS.items() if config.get(flag)]
        if len(modes) != 1:
            raise MoaiError(f"{path}: expected exactly one pooling mode, found {modes or 'none'}")
        mode = modes[0]
        dims = config.get("word_embedding_dimension")
    return mode, dims, bool(config.get("include_prompt", True))


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def derive_contract(directory: Path) -> EmbeddingContract:
    """Derive the contract of a sentence-transformers model directory."""
    import tokenizers

    from .qwen3_tokenizer import END_OF_TEXT, appended_end_token

    directory = Path(directory)
    if not directory.is_dir():
        raise MoaiError(f"{directory}: not a directory")
    if not (directory / MODULES_FILE).is_file():
        raise MoaiError(
            f"{directory}: no {MODULES_FILE}; the embedding contract (pooling, prompts, normalization) "
            "is unknown for a plain transformers checkpoint"
        )
    modules = _read_json(directory / MODULES_FILE, "module list")
    kinds = [_module_kind(m.get("type", "")) for m in modules]
    if not kinds or kinds[0] != "Transformer":
        raise MoaiError(f"{directory}: first module must be a Transformer, found {kinds[:1]}")
    pooling_modules = [m for m in modules if _module_kind(m.get("type", "")) == "Pooling"]
    if len(pooling_modules) != 1:
        raise MoaiError(f"{directory}: expected one Pooling module, found {len(pooling_modules)}")
    extra = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if extra:
        raise MoaiError(f"{directory}: modules {extra} are not supported (Transformer, Pooling, Normalize are)")
    pooling, dims, include_prompt = _read_pooling(directory / pooling_modules[0]["path"])

    model_config = _read_json(directory / "config.json", "model configuration")
    hidden = model_config.get("hidden_size")
    if dims is None:
        dims = hidden
    if hidden is not None and dims != hidden:
        raise MoaiError(f"{directory}: pooling says {dims} dims but the model's hidden size is {hidden}")

    st_config = {}
    if (directory / ST_CONFIG_FILE).is_file():
        st_config = _read_json(directory / ST_CONFIG_FILE, "sentence-transformers configuration")
    prompts_in = st_config.get("prompts") or {}
    default_name = st_config.get("default_prompt_name")
    prompts = {
        "query": prompts_in.get("query", ""),
        # sentence-transformers encodes documents with the "document" prompt, else the default one
        "document": prompts_in.get("document", prompts_in.get(default_name, "") if default_name else ""),
    }
    if not include_prompt and any(prompts.values()):
        raise MoaiError(f"{directory}: pooling that excludes the prompt tokens is not supported")

    tokenizer_config = {}
    if (directory / "tokenizer_config.json").is_file():
        tokenizer_config = _read_json(directory / "tokenizer_config.json", "tokenizer configuration")
    if not (directory / "tokenizer.json").is_file():
        raise MoaiError(f"{directory}: no tokenizer.json (a fast tokenizer file is required)")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise MoaiError(f"{directory / 'tokenizer.json'}: cannot be read ({exc})") from None

    max_tokens = None
    if (directory / SBERT_CONFIG_FILE).is_file():
        max_tokens = _read_json(directory / SBERT_CONFIG_FILE, "max_seq_length").get("max_seq_length")
    if max_tokens is None:
        candidates = [
            v
            for v in (tokenizer_config.get("model_max_length"), model_config.get("max_position_embeddings"))
            if isinstance(v, int) and v < 10**7
        ]
        if not candidates:
            raise MoaiError(f"{directory}: maximum sequence length unknown; pass --max-tokens")
        max_tokens = min(candidates)

    end_token = appended_end_token(tokenizer)
    if end_token is None and pooling == "lasttoken":
        # Qwen3-Embedding checkpoints saved by some tokenizer versions lost the post-processor;
        # the model was trained with <|endoftext|> appended, so restore exactly that.
        if tokenizer.token_to_id(END_OF_TEXT) is None:
            raise MoaiError(
                f"{directory}: last-token pooling but the tokenizer appends no end token and has no {END_OF_TEXT}"
            )
        end_token = END_OF_TEXT

    pad_token = _token_content(tokenizer_config.get("pad_token"))
    if pad_token is None:
        padding = tokenizer.padding
        pad_token = padding["pad_token"] if padding else (end_token if pooling == "lasttoken" else None)
    if pad_token is None or tokenizer.token_to_id(pad_token) is None:
        raise MoaiError(f"{directory}: the tokenizer has no usable pad token ({pad_token!r})")

    return EmbeddingContract(
        pooling=pooling,
        normalize="Normalize" in kinds,
        dims=int(dims),
        max_tokens=int(max_tokens),
        padding_side=tokenizer_config.get("padding_side", "right"),
        pad_token=pad_token,
        pad_token_id=tokenizer.token_to_id(pad_token),
        end_token=end_token,
        end_token_id=tokenizer.token_to_id(end_token) if end_token else None,
        prompts=prompts,
        similarity=st_config.get("similarity_fn_name") or "cosine",
    )


def write_sentence_transformers_files(contract: EmbeddingContract, directory: Path) -> None:
    """Write modules.json and the module configs that make `directory` load with plain
    `SentenceTransformer(directory)` and behave as the contract says."""
    directory = Path(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if contract.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": contract.dims,
        "pooling_mode_cls_token": contract.pooling == "cls",
        "pooling_mode_mean_tokens": contract.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": contract.pooling == "lasttoken",
        "include_prompt": True,
    }
    (directory / "1_Pooling").mkdir(exist_ok=True)
    _write_json(directory / "1_Pooling" / "config.json", pooling)
    _write_json(directory / MODULES_FILE, modules)
    _write_json(directory / SBERT_CONFIG_FILE, {"max_seq_length": contract.max_tokens, "do_lower_case": False})
    _write_json(
        directory / ST_CONFIG_FILE,
        {
            "model_type": "SentenceTransformer",
            "prompts": dict(contract.prompts),
            "default_prompt_name": None,
            "similarity_fn_name": contract.similarity,
        },
    )


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
