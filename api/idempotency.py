"""Named submissions: the job id a client chose, or one derived from its Idempotency-Key.

A resubmission under the same name is the same job: with the same request it answers with that
job, which never runs twice; with a different request it is a 422 (IETF httpapi draft
"The Idempotency-Key HTTP Header Field"). The name lives as long as its job (the retention).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# The request fields that make two submissions the same request.
FINGERPRINTED = ("task", "payload", "id", "webhook_url", "job_id")
KEY_PREFIX = "idem-"


def job_id_for_key(key: str) -> str:
    """Return the job id an Idempotency-Key names (within RQ's id rule, whatever the key)."""
    return KEY_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def fingerprint(body: dict[str, Any]) -> str:
    """Return a digest of what `body` asks for: equal for the same request, in any key order."""
    asked = {name: body.get(name) for name in FINGERPRINTED}
    asked["payload"] = body.get("payload", {})
    text = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate escape ("\ud800") is valid JSON but no UTF-8: kept as its own bytes, so
    # every other request's digest stays what it was.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
