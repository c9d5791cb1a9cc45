"""The one error type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from a user (a config field, a flag, a file): the message names the field and what is allowed."""
