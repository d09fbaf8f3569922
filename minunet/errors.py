"""Errors a user can fix.

Every mistake a user can make (a missing file, a bad tile size, a device that is not there) is
raised as a :class:`UserError` with a one-line message naming the file or option and the fix.
The command line prints that line and exits with status 2, never a traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""
