"""The one exception type the CLI turns into a clean, single-line error message."""


class PdiffError(Exception):
    """A problem with the user's input: the message names the problem and the fix."""
