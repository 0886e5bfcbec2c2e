"""Parity gates: the one gate table, the probe set, parity figures, and the one writer of
verification records."""
