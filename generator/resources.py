"""Where the shipped prompts/ and seeds/ folders are, in a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`prompts` or `seeds`: the wheel keeps them in generator/_data/, a checkout at its top."""
    for candidate in (_HERE / "_data" / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"Sprout's {name}/ folder is missing from this installation")
