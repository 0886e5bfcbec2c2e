"""Evaluation code and data shared by training, the benchmarks, the probe set and the example:
BEIR datasets (`beir`), retrieval metrics (`retrieval_metrics`), the machine a result was
measured on (`machine`), figure helpers (`plotting`) and the built-in Korean finance triplets
(`finance_triplets`).

It imports nothing above `errors`, so every layer can use it without an import cycle."""
