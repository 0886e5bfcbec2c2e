"""`moai-export embed`: a whole corpus re-embedded on Ray Data into Parquet shards a vector store
loads, resumable and exactly once, by an artifact whose configuration a gate admitted."""
