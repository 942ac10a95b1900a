"""The one exception type that reaches users as a one-line message."""


class RlrpError(Exception):
    """A user-facing failure: the CLI prints ``str(error)`` on one line and exits non-zero."""


def first_line(error: Exception, limit: int = 300) -> str:
    """The first line of an underlying library's message (its type when empty), for one-line errors."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]
