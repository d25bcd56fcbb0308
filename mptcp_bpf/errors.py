"""Errors that carry a hint on how to fix them (printed by the CLI)."""


class HintedError(Exception):
    """An error a user can act on: `str()` says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint
