"""Reading a user's text files: one rule for encodings everywhere.

UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8" and Notepad write (left in,
it glues itself to the first column's name: a "missing column" that is there). Anything else is
a one-line error naming the file and the byte, never a UnicodeDecodeError traceback."""

from __future__ import annotations

from pathlib import Path

from generator.errors import UserError


def decode(data: bytes, where: str | Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{where} line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                        "save the file as UTF-8 and run again") from None


def read_text(path: str | Path) -> str:
    """The file's text (see the module docstring); a missing file is a UserError too."""
    path = Path(path)
    try:
        return decode(path.read_bytes(), path)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; name a file") from None
