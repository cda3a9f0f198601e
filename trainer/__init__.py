"""Sprout's training side: dataset formatting, LoRA training, evaluation."""
