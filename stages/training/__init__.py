"""Stage 2: fine-tuning (losses, methods, the shared loop, the CLI, the training-step benchmark)."""
