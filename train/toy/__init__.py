"""The toy scale of the recipe: a synthetic integer-answer task, a tokenizer and a tiny Qwen2 built from scratch."""
