"""The one exception a user sees as a message instead of a traceback."""


class UserError(Exception):
    """Bad input or a missing resource: printed as one message, exit status 2."""
