"""Stage 3a: benchmarks -> metrics JSON (zero-shot heads, metrics, benchmark table, CLI)."""
