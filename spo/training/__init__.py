"""Losses (pure functions), LoRA handling and the trainers that orchestrate them."""
