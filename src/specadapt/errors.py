"""User-facing errors.

Anything a user can get wrong (paths, model pairs, sampling parameters, prompts)
is reported as a :class:`SpecAdaptError` whose message names the problem and the
fix. The CLI prints these without a traceback.
"""


class SpecAdaptError(Exception):
    """A problem with the user's input or environment, with a message saying how to fix it."""


class SpecAdaptWarning(UserWarning):
    """Something about the user's setup that makes results worse, though nothing fails (e.g. a slow CPU path)."""
