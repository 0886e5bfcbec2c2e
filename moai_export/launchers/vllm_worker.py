"""A vLLM offline engine in its own process and environment (.venv-vllm).

Run by the `vllm:` Embedder as `<venv>/bin/python vllm_worker.py CONFIG_JSON RESPONSE_FD`;
it imports nothing from moai_export (which is not installed in the vLLM environment).
Requests arrive as JSON lines on stdin: {"token_ids": [[...], ...]} (already tokenized by the
contract, so truncation and prompts are exactly the toolkit's). Responses go as JSON lines to
RESPONSE_FD (stdout belongs to vLLM's logs): {"ready": true}, {"embeddings": base64 float32,
"shape": [n, d]} or {"error": "..."}.
"""

import base64
import json
import os
import sys


def main() -> int:
    config = json.loads(sys.argv[1])
    responses = os.fdopen(int(sys.argv[2]), "w", buffering=1)

    def send(message):
        responses.write(json.dumps(message) + "\n")
        responses.flush()

    try:
        import numpy as np
        from vllm import LLM
        from vllm.config import PoolerConfig

        llm = LLM(
            model=config["model"],
            runner="pooling",
            pooler_config=PoolerConfig(**config["pooler_config"]),
            dtype=config["dtype"],
            max_model_len=config["max_model_len"],
            kv_cache_memory_bytes=config["kv_cache_memory_bytes"],
            enforce_eager=True,
            seed=0,
        )
    except Exception as exc:  # reported to the parent as one line
        send({"error": f"vLLM engine failed to start: {type(exc).__name__}: {exc}"})
        return 1
    send({"ready": True})
    for line in sys.stdin:
        try:
            request = json.loads(line)
            prompts = [{"prompt_token_ids": ids} for ids in request["token_ids"]]
            outputs = llm.embed(prompts, use_tqdm=False)
            vectors = np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32)
            send({"embeddings": base64.b64encode(vectors.tobytes()).decode(), "shape": list(vectors.shape)})
        except Exception as exc:
            send({"error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
