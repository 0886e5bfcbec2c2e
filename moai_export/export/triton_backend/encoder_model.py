"""Triton python backend: run the ONNX artifact (model.onnx beside this file) with
onnxruntime on CPU. The graph pools and normalizes; this only batches what the dynamic batcher
hands over: every row unpadded, sorted by length and cut into passes under a token budget
(`max_batch_tokens` padded tokens), each padded only to its own longest row. Padding everything
to the longest text of the execution would spend most of a pass on padding when a near-max
document meets short queries. Standard library + numpy only: the Triton image carries no
moai_export (core.batching.TokenBudget is the same rule)."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        threads = int(parameters.get("intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        with open(os.path.join(here, "moai_contract.json"), encoding="utf-8") as handle:
            contract = json.load(handle)
        self.pad_id = contract["pad_token_id"]
        self.left = contract["padding_side"] == "left"
        self.max_batch_tokens = int(parameters.get("max_batch_tokens", "4096"))

    def batches(self, lengths):
        """Positions of each pass: longest first, rows x longest row within the budget (a row
        longer than the budget alone)."""
        out, current, longest = [], [], 0
        for position in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            longest = longest or lengths[position]
            if current and (len(current) + 1) * longest > self.max_batch_tokens:
                out.append(current)
                current, longest = [], lengths[position]
            current.append(position)
        return out + [current] if current else out

    def run(self, rows):
        """Vectors of unpadded token rows (same order), padded per pass on the contract's side."""
        vectors = [None] * len(rows)
        for positions in self.batches([len(r) for r in rows]):
            width = max(len(rows[i]) for i in positions)
            ids = np.full((len(positions), width), self.pad_id, dtype=np.int64)
            masks = np.zeros((len(positions), width), dtype=np.int64)
            for n, i in enumerate(positions):
                span = slice(width - len(rows[i]), width) if self.left else slice(0, len(rows[i]))
                ids[n, span], masks[n, span] = rows[i], 1
            out = self.session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": masks})[0]
            for n, i in enumerate(positions):
                vectors[i] = out[n]
        return np.stack(vectors)

    def execute(self, requests):
        rows, counts = [], []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            masks = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            rows.extend(row[mask.astype(bool)] for row, mask in zip(ids, masks))  # the real tokens only
            counts.append(len(ids))
        vectors = self.run(rows)
        responses, start = [], 0
        for rows_of_request in counts:
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("sentence_embedding", vectors[start:start + rows_of_request])]))
            start += rows_of_request
        return responses
