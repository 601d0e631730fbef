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


# Characters that change how the text around them is displayed without being visible
# themselves: C0/C1 controls, bidirectional embeddings/overrides/isolates/marks (a U+202E
# "right-to-left override" makes "acme‮cod.exe" display as "acmeexe.doc"), zero-width
# spaces/joiners, the word joiner and a stray byte-order mark.
_INVISIBLE = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u2069\ufeff]"
)


def visible(text: object) -> str:
    """``text`` with every invisible or direction-changing character written out as
    ``<U+XXXX>``, so that what a report shows is what the data holds (an id cannot pretend to
    be another by reordering how it is drawn). Tabs and newlines are left to the caller."""
    return _INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", str(text))
