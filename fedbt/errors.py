"""Errors raised before any training starts, each naming what is wrong and what is allowed."""


class FedBTError(Exception):
    """Base class of the suite's own errors; the CLI prints them without a traceback."""


class ConfigError(FedBTError):
    """A config key, value or combination is invalid.

    ``key`` is the dotted config path (``federation.rounds``) so that the message points at the line
    to fix.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


class DataError(FedBTError):
    """A data file is missing, malformed, or disagrees with its task's specification."""
