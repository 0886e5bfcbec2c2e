"""Launchers for the servers this toolkit deploys to (local tritonserver, vLLM)."""
