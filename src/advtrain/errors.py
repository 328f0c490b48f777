"""The one exception type that the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong path, option or value.

    The message must be one line that names the problem and the fix. The CLI prints it without a
    traceback and exits with code 2; library callers can catch it like any other exception.
    """
