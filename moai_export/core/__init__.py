"""The foundation every layer shares: errors, the embedding contract, input rules, batching,
pooling, addresses, process liveness, text tables. Imports nothing else of moai_export."""
