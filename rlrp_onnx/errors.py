"""The one exception type that reaches users as a one-line message."""


class RlrpError(Exception):
    """A user-facing failure: the CLI prints ``str(error)`` on one line and exits non-zero."""
