"""User-facing errors.

Every problem a user can fix (a missing file, a bad config value, a corrupt input) is raised as
:class:`InputError` with a one-line message that names the file or key and the problem. The CLI
prints that line and exits with status 2, instead of a traceback from deep inside a library.
"""

EXIT_OK = 0
EXIT_FAILURE = 1  # a bug or an unexpected library error: traceback in the log
EXIT_BAD_INPUT = 2  # an InputError: one line naming the file/key and the problem
EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: not finished, checkpoint saved, rerun to resume
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class InputError(Exception):
    """Bad input the user can fix: the message names the file/key and the problem."""
