"""Core commands: import-embeddings, sweep, dedup, runs, restore, export (filled in by the core)."""
