"""Client hints (SPEC §11): `width=auto` resolved from the request's Sec-CH-* headers.

The parsed options stay pure (options.py leaves a marker); this step turns the marker into a width
before the cache key is made, so the key holds the resolved width and a `width=auto` answer shares
its entry with the explicit `width=N` request it resolved to.

Units, as Chromium sends them (measured, tests/test_hints_browser.py): `Sec-CH-Width` is the image's
layout width in physical pixels (ceil of CSS width x DPR; for an <img> with `sizes`, or with a `width`
attribute in parsed markup), `Sec-CH-Viewport-Width` is in CSS pixels, `Sec-CH-DPR` a decimal such as 2.625. A hint
that is not a plain bounded number is ignored as if absent: it comes from the client, and a bad
one must never cost more than a fallback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Config
from .html import width_steps
from .options import AUTO_DEVICE, RenderOptions

ACCEPT_CH = "Sec-CH-DPR, Sec-CH-Width, Sec-CH-Viewport-Width"
WIDTH = "Sec-CH-Width"
VIEWPORT_WIDTH = "Sec-CH-Viewport-Width"
DPR = "Sec-CH-DPR"
HEADER_NAMES = {name.lower().encode(): name for name in (WIDTH, VIEWPORT_WIDTH, DPR)}
MAX_HINT_WIDTH = 100_000  # px, beyond any screen; a larger value is ignored, not clamped
DPR_RANGE = (0.1, 10.0)  # zoomed-out pages report below 1
MAX_HINT_LENGTH = 16
DIGITS = frozenset("0123456789")
OWS = " \t"


@dataclass(frozen=True)
class ClientHints:
    width: int | None = None  # Sec-CH-Width, physical px
    viewport_width: int | None = None  # Sec-CH-Viewport-Width, CSS px
    dpr: float | None = None  # Sec-CH-DPR


def hint_width(raw: str | None) -> int | None:
    """A whole number of pixels 1..MAX_HINT_WIDTH (sf-integer), else None."""
    text = (raw or "").strip(OWS)
    if not text or len(text) > MAX_HINT_LENGTH or not set(text) <= DIGITS:
        return None
    value = int(text)
    return value if 1 <= value <= MAX_HINT_WIDTH else None


def hint_dpr(raw: str | None) -> float | None:
    """A plain decimal in DPR_RANGE (sf-decimal or integer: no sign, exponent, nan or inf), else None."""
    text = (raw or "").strip(OWS)
    if not text or len(text) > MAX_HINT_LENGTH or not set(text) <= DIGITS | {"."}:
        return None
    whole, dot, fraction = text.partition(".")
    if not whole or (dot and not fraction) or "." in fraction:
        return None
    value = float(text)
    return value if DPR_RANGE[0] <= value <= DPR_RANGE[1] else None


def client_hints(headers: Iterable[tuple[bytes, bytes]]) -> ClientHints:
    """The hints of an ASGI scope's header lines. A hint sent on two lines is ambiguous: ignored."""
    found: dict[str, str | None] = {}
    for name, value in headers:
        hint = HEADER_NAMES.get(name.lower())
        if hint is not None:
            found[hint] = None if hint in found else value.decode("latin-1")
    return ClientHints(hint_width(found.get(WIDTH)), hint_width(found.get(VIEWPORT_WIDTH)), hint_dpr(found.get(DPR)))


def round_up(pixels: float, steps: Iterable[int]) -> int:
    """The smallest step at least `pixels` wide; above the largest, the largest."""
    ordered = sorted(steps)
    wanted = math.ceil(pixels - 1e-9)  # 300.0000001 from a float division is still 300
    return next((step for step in ordered if step >= wanted), ordered[-1])


def resolve_width(options: RenderOptions, hints: ClientHints, config: Config) -> tuple[RenderOptions, tuple[str, ...]]:
    """`options` with width=auto replaced by a width, and the hint headers that decided it (Vary).

    Without `dpr` in the URL the target is physical pixels (Sec-CH-Width as is, or the viewport
    times Sec-CH-DPR), rounded up to a step and rendered at dpr 1; with `dpr`, the CSS width (Sec-CH-Width
    over Sec-CH-DPR, or the viewport) is rounded up and the URL's dpr multiplies it. Steps whose output
    would pass max_output_width are left out, so the answer is never a 413 for the width chosen here.
    Without a usable width hint the options are those of the URL without `width=auto` (the preset's
    width, or none) — but with `allowed_widths` set that width is rounded up to one of them too (none:
    the largest that fits), so an unsigned `width=auto` always resolves to an allowed width.
    """
    if not options.auto_width:
        return options, ()
    device = options.auto_width == AUTO_DEVICE
    ratio = hints.dpr or 1.0
    steps = width_steps(config)  # without `dpr` in the URL options.dpr is 1
    fitting = [step for step in steps if step * options.dpr <= config.limits.max_output_width] or [min(steps)]
    if hints.width is not None:
        used: tuple[str, ...] = (WIDTH,) if device else (WIDTH, DPR)
        target: float = hints.width if device else hints.width / ratio
    elif hints.viewport_width is not None:
        used = (WIDTH, VIEWPORT_WIDTH, DPR) if device else (WIDTH, VIEWPORT_WIDTH)
        target = hints.viewport_width * ratio if device else hints.viewport_width
    elif config.security.allowed_widths:
        used, target = (WIDTH, VIEWPORT_WIDTH), options.width or max(fitting)
    else:
        return dataclasses.replace(options, auto_width=""), (WIDTH, VIEWPORT_WIDTH)
    return dataclasses.replace(options, width=round_up(target, fitting), auto_width=""), used


def page_headers(config: Config) -> dict[str, str]:
    """What pages send so that Chromium sends the hints with the page's own image requests, from the
    first load on (same-origin subresources need no Critical-CH or Permissions-Policy; measured)."""
    return {"Accept-CH": ACCEPT_CH} if config.render.client_hints else {}
