"""The one base class of errors a user can cause and fix."""


class UserError(Exception):
    """A problem with the user's input or files; the message names it and the fix, in one sentence."""
