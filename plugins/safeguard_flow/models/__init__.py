"""The models: per-model presets, the local stand-in model (from PyPI) and gpt-oss-tiny (built offline)."""
