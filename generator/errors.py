"""User-facing errors.

A `UserError` is a mistake the user can fix (bad file, bad flag, port in use...). The CLI prints
its message on one line and exits with code 2 -- never a traceback. Everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""

    exit_code = 2
