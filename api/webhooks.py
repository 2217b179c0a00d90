"""Webhook targets as the API checks them at submission: a refused target is a 400."""

from __future__ import annotations

from api.errors import ApiError
from shared.addresses import RESOLVE_TIMEOUT, TargetError, checked_addresses


def check_target(url: str, *, allow_private: bool, timeout: float = RESOLVE_TIMEOUT) -> None:
    """Refuse (400) a webhook URL whose host does not resolve, or is or resolves to a non-public
    address (unless `allow_private`). Delivery checks again at send time (worker/webhooks.py)."""
    try:
        checked_addresses(url, allow_private=allow_private, timeout=timeout)
    except TargetError as exc:
        raise ApiError(400, str(exc)) from None
