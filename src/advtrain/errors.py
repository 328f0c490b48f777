"""The exceptions the command line turns into a one-line message and an exit code, never a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong path, option or value.

    The message must be one line that names the problem and the fix. The CLI prints it without a
    traceback and exits with code 2; library callers can catch it like any other exception.
    """

    exit_code = 2


class TrainingStopped(Exception):
    """Training ended before its last epoch, on purpose (a signal) or by a guard (a non-finite loss); or a
    torchrun process (training or evaluation) stopped because another one failed.

    The message is one line that says where training stopped and what was kept; the CLI exits with
    ``exit_code``.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class InvalidValue(UserError, ValueError):
    """A value a library function cannot use, e.g. an unknown norm name or ε in 0..255 units.

    A ValueError to Python callers; a UserError (one line, exit 2) when the value came from the command line
    or a config file. The message names the fix.
    """
