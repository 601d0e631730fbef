"""Safe names for untrusted customer ids.

Customer ids come from billing exports and may hold path separators, ``..``, spaces, unicode,
hundreds of characters, or differ only in case. The same key is used as a file name, a Dagster
partition key and part of an MLflow model name, so it must be safe for all three and injective.
"""

from __future__ import annotations

import hashlib
import re

_PLAIN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def customer_key(customer_id: str) -> str:
    """Readable, collision-free key: the id itself when it is already plain lower-case ASCII,
    otherwise a short slug plus a hash of the exact id (so ``Acme`` and ``acme`` differ)."""
    text = str(customer_id)
    if _PLAIN.fullmatch(text) and not re.fullmatch(r".*-h[0-9a-f]{10}", text):
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    slug = _UNSAFE.sub("-", text.lower()).strip("-_")[:32] or "id"
    return f"{slug}-h{digest}"
