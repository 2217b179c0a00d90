"""Errors shared by the API and the workers."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration variable is missing or malformed; the message names it."""


class IndexNotFoundError(Exception):
    """The Redis database holds no index marker: the index was never written, or was flushed."""
