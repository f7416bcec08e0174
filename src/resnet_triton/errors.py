"""The base of every error a user can cause: the CLI prints these in one line."""


class UserError(Exception):
    """Bad input, configuration or environment, explained in the message."""


class DataError(UserError, ValueError):
    """Data that cannot be trained or evaluated on: a folder, a manifest, a file in them."""
