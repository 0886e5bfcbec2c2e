"""moai-export: ship a LoRA-tuned Qwen3 embedding model without silent accuracy loss."""

__version__ = "0.1.0"
