"""Using and measuring checkpoints: `janus generate`, `janus eval geneval`, `janus eval judge` (docs/evaluation.md)."""
