"""User-facing errors.

Every problem a user can fix (a missing file, a bad config value, a corrupt input) is raised as
:class:`InputError` with a one-line message that names the file or key and the problem. The CLI
prints that line and exits with status 2, instead of a traceback from deep inside a library.
"""


class InputError(Exception):
    """Bad input the user can fix: the message names the file/key and the problem."""
