"""Exporters: one module per target, each reading its input's contract and ending in a parity gate."""
