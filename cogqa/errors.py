"""The one exception type cogqa raises for bad input.

The CLI turns it into a single line ``error: <message>`` and a non-zero exit status;
the message always names the offending field and, where possible, the fix.
"""


class CogqaError(ValueError):
    """Bad input or an impossible request, explained in one line."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`CogqaError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CogqaError(message)
