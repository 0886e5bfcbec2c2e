"""One peer contender of bench/peers.py, run in the peer virtualenv (bench/setup_peers.sh), never
in the project's: it imports sentence-transformers only, not moai_export.

    .venv-peers/bin/python bench/peer_worker.py st-torch|st-onnx|st-onnx-int8 MODEL_DIR TEXTS_JSON

Loads the model once (exporting the ONNX graphs first where they are missing), prints one JSON line
{"ready": ...}, then answers JSON-line commands on stdin, one JSON line each on stdout:
  {"op": "documents", "out": PATH}   embed every document in ONE encode call (batch 32, as a user
                                     calls it; sentence-transformers sorts by length inside; the
                                     model's prompts, as its encode_query / encode_document apply),
                                     save the vectors to PATH (.npy) -> {"seconds": S}
  {"op": "queries", "count": N, "out": PATH}  N queries one at a time -> {"latencies_s": [...]}
  {"op": "quit"}
So the orchestrator can interleave rounds with the project's paths without reloading anything.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

INT8_CONFIG = "avx512_vnni"  # sentence-transformers' dynamic int8 preset for AVX512-VNNI CPUs (this EPYC)
INT8_FILE = f"model_qint8_{INT8_CONFIG}.onnx"
BATCH_SIZE = 32  # SentenceTransformer.encode's default


def load(contender: str, model_dir: Path):
    from sentence_transformers import SentenceTransformer

    if contender == "st-torch":
        return SentenceTransformer(str(model_dir), device="cpu")
    # the ONNX backend exports into MODEL_DIR/onnx/: work on a copy, never in the merged artifact
    onnx_copy = model_dir.parent / f"{model_dir.name}-st-onnx"
    if not (onnx_copy / "onnx" / "model.onnx").is_file():
        shutil.rmtree(onnx_copy, ignore_errors=True)
        shutil.copytree(model_dir, onnx_copy)
        model = SentenceTransformer(str(onnx_copy), device="cpu", backend="onnx")
        model.save_pretrained(str(onnx_copy))  # keeps onnx/model.onnx, so later runs skip the export
    if contender == "st-onnx":
        return SentenceTransformer(str(onnx_copy), device="cpu", backend="onnx")
    if not (onnx_copy / "onnx" / INT8_FILE).is_file():
        from sentence_transformers import export_dynamic_quantized_onnx_model

        fp32 = SentenceTransformer(str(onnx_copy), device="cpu", backend="onnx")
        export_dynamic_quantized_onnx_model(fp32, INT8_CONFIG, str(onnx_copy))
    return SentenceTransformer(str(onnx_copy), device="cpu", backend="onnx",
                               model_kwargs={"file_name": f"onnx/{INT8_FILE}"})


def feed_position_ids(model) -> None:
    """optimum exports Qwen3 with a `position_ids` input, which sentence-transformers never feeds
    ("Input position_ids is required by model but not provided"): give it 0..n-1 per row, what
    transformers uses when no positions are passed (so the torch contender computes the same)."""
    import torch

    ort_model = model[0].auto_model
    if "position_ids" not in ort_model.input_names:
        return
    forward = ort_model.forward

    def with_positions(input_ids=None, attention_mask=None, **kwargs):
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    ort_model.forward = with_positions


def main() -> None:
    contender, model_dir, texts_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    texts = json.loads(texts_file.read_text(encoding="utf-8"))
    start = time.perf_counter()
    model = load(contender, model_dir)
    if contender != "st-torch":
        feed_position_ids(model)
    encode_documents = partial(model.encode, prompt_name="document" if "document" in model.prompts else None,
                               batch_size=BATCH_SIZE)
    encode_query = partial(model.encode, prompt_name="query", batch_size=1)
    encode_documents(texts["documents"][:4])  # warm-up, untimed
    encode_query(texts["queries"][:2])
    reply({"ready": True, "load_s": time.perf_counter() - start, "prompts": model.prompts})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        if command["op"] == "documents":
            start = time.perf_counter()
            vectors = encode_documents(texts["documents"])
            seconds = time.perf_counter() - start
            np.save(command["out"], np.asarray(vectors, dtype=np.float32))
            reply({"seconds": seconds})
        elif command["op"] == "queries":
            latencies, vectors = [], []
            for text in texts["queries"][:command["count"]]:
                start = time.perf_counter()
                vectors.append(encode_query([text])[0])
                latencies.append(time.perf_counter() - start)
            np.save(command["out"], np.asarray(vectors, dtype=np.float32))
            reply({"latencies_s": latencies})


def reply(message: dict) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    main()
