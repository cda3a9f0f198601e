"""Sprout's data side: teacher server and client, templates, parsing, filters, generation."""

__version__ = "0.1.0"
