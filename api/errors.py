"""The API's error type: raised anywhere, answered as the JSON envelope by `api.handlers`."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as an envelope with HTTP status `code` and `message`."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.fields = fields
