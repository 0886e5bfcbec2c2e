"""A random-weight Qwen3 embedding base, laid out exactly like Qwen/Qwen3-Embedding-0.6B on
the hub (sentence-transformers files, prompts, tokenizer with the end-token post-processor)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.contract import QWEN3_QUERY_PROMPT, EmbeddingContract
from ..model_files.portable_config import write_portable_config
from ..model_files.qwen3_tokenizer import END_OF_TEXT, END_OF_TEXT_ID, QWEN3_VOCAB_SIZE, save_qwen3_tokenizer
from ..model_files.sentence_transformers_format import write_sentence_transformers_files

# Qwen3 shapes. head_dim stays in what vLLM's CPU attention accepts (32, 64, 80, 96, 112, 128, ...).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=32, intermediate_size=128),
    "small": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=64, intermediate_size=768),
    # Qwen3-Embedding-0.6B
    "full": dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072),
}

MAX_TOKENS = 1024  # MoAI's max_seq_length


def qwen3_config(size: str):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=END_OF_TEXT_ID,
        eos_token_id=END_OF_TEXT_ID,
        pad_token_id=END_OF_TEXT_ID,
        attention_bias=False,
        hidden_act="silu",
        **SIZES[size],
    )


def example_contract(dims: int) -> EmbeddingContract:
    return EmbeddingContract(
        pooling="lasttoken",
        normalize=True,
        dims=dims,
        max_tokens=MAX_TOKENS,
        padding_side="left",
        pad_token=END_OF_TEXT,
        pad_token_id=END_OF_TEXT_ID,
        end_token=END_OF_TEXT,
        end_token_id=END_OF_TEXT_ID,
        prompts={"query": QWEN3_QUERY_PROMPT, "document": ""},
    )


def build_base(out: Path, size: str, seed: int) -> EmbeddingContract:
    """Write a random-weight Qwen3 embedding model in sentence-transformers layout to `out`.

    Like a hub checkpoint it carries no moai_contract.json: `merge` derives the contract from
    the sentence-transformers files, as it must for the real base.
    """
    from transformers import Qwen3Model

    config = qwen3_config(size)
    torch.manual_seed(seed)
    model = Qwen3Model(config).eval()
    model.save_pretrained(str(out))
    write_portable_config(out)  # the hub's config.json (written by transformers 4.51) spells rope_theta so
    save_qwen3_tokenizer(out, model_max_length=MAX_TOKENS)
    contract = example_contract(config.hidden_size)
    write_sentence_transformers_files(contract, out)
    return contract
