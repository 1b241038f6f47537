"""User-facing errors: the CLI prints their message as one line and exits 2."""

from llmpre._core import DataError


class LlmpreError(Exception):
    """An error caused by the user's input; the message says what to change."""


class ConfigError(LlmpreError, ValueError):
    """Bad arguments, configuration keys or model names."""


USER_ERRORS = (LlmpreError, DataError)
