"""Embed texts with a model directory as the transformers 4.x ecosystem loads it.

Runs in the legacy loaders' environment (.venv-legacy: transformers 4.51, sentence-transformers
4.1), never imports moai_export: it sees only the files in the directory, as another stack would.
Two loaders, each the way their documentation shows for Qwen3-Embedding:
  - transformers: AutoModel + AutoTokenizer (left padding), the contract's prompt for the kind,
    truncation to its max_tokens, last-token pooling, L2 normalization;
  - sentence-transformers: SentenceTransformer(dir).encode(texts, prompt_name=kind), which reads the
    pooling, normalization and prompts from the sentence-transformers files.

stdin:  {"models": [DIR, ...], "texts": {LOADER: {KIND: [text, ...]}}}, LOADER "transformers" or
        "sentence_transformers", KIND "query" or "document"
stdout: {"versions": {...}, "vectors": {DIR: {LOADER: {KIND: [[float, ...], ...]}}}}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer


def transformers_vectors(model_dir: Path, texts: dict[str, list[str]]) -> dict[str, list]:
    contract = json.loads((model_dir / "moai_contract.json").read_text(encoding="utf-8"))
    if contract["pooling"] != "lasttoken":
        raise SystemExit(f"this loader implements last-token pooling, not {contract['pooling']!r}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    vectors = {}
    for kind, kind_texts in texts.items():
        prompt = contract["prompts"].get(kind) or ""
        batch = tokenizer([prompt + text for text in kind_texts], padding=True, truncation=True,
                          max_length=contract["max_tokens"], return_tensors="pt")
        with torch.no_grad():
            pooled = model(**batch).last_hidden_state[:, -1]  # left padding: every sequence ends last
        if contract["normalize"]:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        vectors[kind] = pooled.tolist()
    return vectors


def sentence_transformers_vectors(model_dir: Path, texts: dict[str, list[str]]) -> dict[str, list]:
    model = SentenceTransformer(str(model_dir), device="cpu")
    return {kind: model.encode(kind_texts, prompt_name=kind).tolist() for kind, kind_texts in texts.items()}


LOADERS = {"transformers": transformers_vectors, "sentence_transformers": sentence_transformers_vectors}


def main() -> None:
    request = json.load(sys.stdin)
    vectors = {model: {loader: LOADERS[loader](Path(model), texts) for loader, texts in request["texts"].items()}
               for model in request["models"]}
    versions = {"transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
                "torch": torch.__version__}
    json.dump({"versions": versions, "vectors": vectors}, sys.stdout)

if __name__ == "__main__":
    main()
