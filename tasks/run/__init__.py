"""The document run in data-flow order: corpus files, extraction, prompts, batching and the rest."""
