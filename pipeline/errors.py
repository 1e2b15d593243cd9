"""The one exception a user sees as a message: importable without pandas or torch."""


class PipelineError(Exception):
    """A problem the user can fix (bad input, bad params): printed as one line, no traceback."""
