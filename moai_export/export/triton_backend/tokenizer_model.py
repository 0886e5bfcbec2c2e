"""Triton python backend: raw text -> input_ids, attention_mask, num_tokens, untruncated_tokens,
exactly as the embedding contract (moai_contract.json beside this file) says: the query prompt for
KIND "query", truncation to max_tokens with the end token kept last (tokenizer.json's post-processor
appends it), padding on the contract's side to the longest text of this execution. num_tokens
[n, 1] is each text's real token count (the ensemble's TOKENS output: usage without re-tokenizing);
untruncated_tokens [n, 1] its count before truncation (UNTRUNCATED_TOKENS: above max_tokens means
the text was cut, which the gateway reports or refuses instead of embedding it silently).

The input rules are moai_export's own (moai_export/core/input_rules.py), copied beside this file as
moai_input_rules.py: this stub has no moai_export to import them from."""

import json
import os
import sys

import numpy as np
import tokenizers
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moai_input_rules import KINDS, InvalidInput, check_texts  # noqa: E402  (beside this file)


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "moai_contract.json"), encoding="utf-8") as handle:
            self.contract = json.load(handle)
        tokenizer = tokenizers.Tokenizer.from_file(os.path.join(here, "tokenizer.json"))
        # the same tokenizer without truncation, run only on the texts that were cut: their full length
        self.counter = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self.counter.no_truncation()
        self.counter.no_padding()
        tokenizer.enable_truncation(max_length=self.contract["max_tokens"])
        tokenizer.enable_padding(direction=self.contract["padding_side"], pad_id=self.contract["pad_token_id"],
                                 pad_token=self.contract["pad_token"])
        self.tokenizer = tokenizer
        self.prompts = self.contract["prompts"]

    def _texts(self, request):
        """The request's prompted texts, or raise ValueError with what is wrong."""
        text_tensor = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if text_tensor is None:
            raise ValueError("the request has no TEXT input")
        text = text_tensor.as_numpy().reshape(-1)
        kind_tensor = pb_utils.get_input_tensor_by_name(request, "KIND")
        if kind_tensor is None:
            kinds = [b"document"] * len(text)
        else:
            kinds = kind_tensor.as_numpy().reshape(-1).tolist()
            if len(kinds) == 1 and len(text) > 1:
                kinds = kinds * len(text)
            if len(kinds) != len(text):
                raise ValueError(f"KIND has {len(kinds)} values for {len(text)} texts")
        values, prompts = [], []
        for index, (raw, kind) in enumerate(zip(text.tolist(), kinds)):
            try:
                values.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
                kind = kind.decode("utf-8") if isinstance(kind, bytes) else str(kind)
            except UnicodeDecodeError as exc:
                raise ValueError(f"TEXT item {index} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            kind = kind or "document"
            if kind not in KINDS:
                raise ValueError(f"item {index}: unknown KIND {kind!r}: expected one of {', '.join(KINDS)}")
            prompts.append(self.prompts.get(kind, ""))
        try:
            values = check_texts(values)
        except InvalidInput as error:
            raise ValueError(error.naming(f"TEXT item {error.index}")) from None
        return [prompt + value for prompt, value in zip(prompts, values)]

    def execute(self, requests):
        # Validate each request on its own: one bad request must not fail its neighbours.
        parsed, responses = [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                parsed.append((index, self._texts(request)))
            except ValueError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)  # HTTP 400, not 500
                responses[index] = pb_utils.InferenceResponse(error=error)
        all_texts = [t for _, texts in parsed for t in texts]
        if all_texts:
            encodings = self.tokenizer.encode_batch(all_texts)  # padded to the longest of this execution
            ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            counts = mask.sum(axis=1, keepdims=True)
            untruncated = counts.copy()
            for row, encoding in enumerate(encodings):
                if encoding.overflowing:
                    untruncated[row, 0] = len(self.counter.encode(all_texts[row]).ids)
            start = 0
            for index, texts in parsed:
                rows = slice(start, start + len(texts))
                start += len(texts)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input_ids", ids[rows]),
                    pb_utils.Tensor("attention_mask", mask[rows]),
                    pb_utils.Tensor("num_tokens", counts[rows]),
                    pb_utils.Tensor("untruncated_tokens", untruncated[rows]),
                ])
        return responses
