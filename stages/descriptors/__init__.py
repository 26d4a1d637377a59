"""Stage 1: spurious-descriptor banks (LLM -> versioned JSON), and the bank file format."""
