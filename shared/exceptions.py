"""Errors shared by the API and the workers."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration variable is missing or malformed; the message names it."""


class RegistryNotFoundError(Exception):
    """The Redis database holds no job registry marker (never used, or flushed)."""
