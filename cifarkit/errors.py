"""The one exception a user sees as a message instead of a traceback."""


class UserError(Exception):
    """Bad input or a missing resource: printed as one message, exit status 2."""


class RankError(UserError):
    """A UserError that only this rank meets (the others wait elsewhere): every rank prints
    its own, not rank 0 alone."""
