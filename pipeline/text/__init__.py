"""Text utilities shared by stages (normalisation for comparisons, leak checks)."""
