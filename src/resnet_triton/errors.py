"""The base of every error a user can cause: the CLI prints these in one line."""


class UserError(Exception):
    """Bad input, configuration or environment, explained in the message."""
