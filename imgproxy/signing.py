"""URL signatures (SPEC §5): HMAC-SHA256 over the raw path, `?` and the raw query without `sig`.

Everything works on the request as sent: the path keeps its percent-encoding and the query is
split into its raw `&`-separated pairs, so the signed bytes are exactly the bytes that arrived.
The `sig` pair is dropped by parsing, never by text replacement: a peer's `str.replace` was
bypassed by pasting a valid signature into the path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import quote, unquote_plus

from .errors import Forbidden

WIDTH_NAMES = frozenset({"scalex", "width", "w"})
ENCODING_NAMES = frozenset({"encoding", "format", "fm"})
# dpr values an unsigned allowed-width request may carry: a few fixed variants per source
UNSIGNED_DPRS = frozenset({1.0, 1.5, 2.0, 3.0})
# Query values keep these readable; everything else a browser might rewrite is escaped.
VALUE_SAFE = ",:"


def sign(path: str, query: str, key: str) -> str:
    digest = hmac.new(key.encode(), f"{path}?{query}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def encode_query(pairs: Iterable[tuple[str, object]]) -> str:
    return "&".join(f"{quote(str(name), safe='')}={quote(str(value), safe=VALUE_SAFE)}" for name, value in pairs)


def signed_url(path: str, query_pairs: Iterable[tuple[str, object]], keys: tuple[str, ...]) -> str:
    """`path?query&sig=…`; the first key signs. No keys: the unsigned URL."""
    query = encode_query(query_pairs)
    if keys:
        signature = f"sig={sign(path, query, keys[0])}"
        query = f"{query}&{signature}" if query else signature
    return f"{path}?{query}" if query else path


def decode_pair(pair: str) -> tuple[str, str]:
    name, _, value = pair.partition("=")
    return unquote_plus(name), unquote_plus(value)


def split_query(raw_query: str) -> tuple[list[str], list[str]]:
    """The raw pairs without `sig`, and the `sig` values found (names compared decoded)."""
    kept: list[str] = []
    sigs: list[str] = []
    for pair in raw_query.split("&") if raw_query else ():
        name, value = decode_pair(pair)
        if name == "sig":
            sigs.append(value)
        else:
            kept.append(pair)
    return kept, sigs


def is_allowed_width_request(pairs: Iterable[tuple[str, str]], allowed_widths: tuple[int, ...]) -> bool:
    """Exactly one width from `allowed_widths` or `auto` (client hints resolve it to one of them, SPEC
    §11) when that list is set, optionally `encoding=auto` and a `dpr` of UNSIGNED_DPRS."""
    seen: set[str] = set()
    width_ok = False
    for name, value in pairs:
        if name in WIDTH_NAMES:
            kind = "width"
            width_ok = (value == "auto" and bool(allowed_widths)) or (
                value.isascii() and value.isdigit() and len(value) <= 6 and int(value) in allowed_widths
            )
            if not width_ok:
                return False
        elif name in ENCODING_NAMES:
            kind = "encoding"
            if value != "auto":
                return False
        elif name == "dpr":
            kind = "dpr"
            if not is_dpr(value):
                return False
        else:
            return False
        if kind in seen:
            return False
        seen.add(kind)
    return width_ok


def is_dpr(value: str) -> bool:
    # Short plain decimals only: no exponents, nan or inf from float()'s wider grammar.
    if not (0 < len(value) <= 8 and value.isascii() and value.replace(".", "", 1).isdigit()):
        return False
    return float(value) in UNSIGNED_DPRS


def check_request(path: str, raw_query: str, keys: tuple[str, ...], allowed_widths: tuple[int, ...]) -> None:
    """Raise Forbidden unless the request is signed by one of `keys` or is an allowed-width one.

    `path` is the raw request path (percent-encoding as sent), `raw_query` the raw query string.
    """
    if not keys:
        return
    kept, sigs = split_query(raw_query)
    if len(sigs) > 1:
        raise Forbidden("bad signature", "more than one sig parameter")
    if not sigs:
        if is_allowed_width_request(map(decode_pair, kept), allowed_widths):
            return
        raise Forbidden("missing signature")
    given = sigs[0].encode("ascii", "replace")
    query = "&".join(kept)
    # Compare against every key, without stopping early, so timing says nothing about which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sign(path, query, key).encode("ascii"), given)
    if not matched:
        raise Forbidden("bad signature")
