"""Errors a user can cause (bad input, a broker that is down): reported as one line, never a traceback."""


class UserFacingError(Exception):
    """Raise this (or a subclass) for a problem the user can fix; the CLI prints it and exits 2."""
