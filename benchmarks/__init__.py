"""llmtune's benchmarks: ``python -m benchmarks.run --suite cpu|gpu|quality|smoke`` (see docs/benchmarks.md)."""
