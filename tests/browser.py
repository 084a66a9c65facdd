"""Debian's Chromium, driven by Playwright's Python package (requirements-dev.txt), for the
console's browser tests and `make screenshots`.

Playwright's own browser download (`playwright install`) is never used: the package drives
/usr/bin/chromium (`make test` installs it: tools/ensure_chromium.sh), each time with a fresh
profile in a temporary directory, headless, and with Chromium's calls home turned off.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


class ChromiumMissing(RuntimeError):
    pass


@contextmanager
def chromium(*, viewport: dict[str, int] | None = None, origin: str | None = None) -> Iterator[BrowserContext]:
    """A browser with a profile of its own; `origin` may use the clipboard (the key's copy button)."""
    if not CHROMIUM.exists():
        raise ChromiumMissing(f"{CHROMIUM} is missing: run `make test` or `bash tools/ensure_chromium.sh` (as root)")
    with tempfile.TemporaryDirectory(prefix="maas-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            # make run's certificate is self-signed, made on its first start.
            ignore_https_errors=True, viewport=viewport or DESKTOP,
        )
        try:
            if origin is not None:
                context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
            context.set_default_timeout(15_000)
            yield context
        finally:
            context.close()
