"""Model directories on disk: the Qwen3 tokenizer built offline, the contract tokenizer and its
files, sentence-transformers modules, the contract a directory promises, LoRA adapters,
safetensors checks, hub-or-local sources, Triton model configs."""
