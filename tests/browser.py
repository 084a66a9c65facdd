"""Debian's Chromium, driven by Playwright's Python package (requirements-dev.txt), for the
console's browser tests and `make screenshots`.

Playwright's own browser download (`playwright install`) is never used: the package drives
/usr/bin/chromium (`make test` installs it: tools/ensure_chromium.sh), headless, with Chromium's
calls home turned off, and each test in a fresh context (no cookies or storage of another's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, sync_playwright

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
def launched() -> Iterator[Browser]:
    """One Chromium process, for a module's tests to share: each test takes a context of its own
    (contexts share no cookies), which costs milliseconds where a new browser costs a second."""
    if not CHROMIUM.exists():
        raise ChromiumMissing(f"{CHROMIUM} is missing: run `make test` or `bash tools/ensure_chromium.sh` (as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def fresh_context(browser: Browser, *, viewport: dict[str, int] | None = None,
                  origin: str | None = None) -> Iterator[BrowserContext]:
    """A context with no cookies or storage yet; `origin` may use the clipboard (the copy button)."""
    # make run's certificate is self-signed, made on its first start.
    context = browser.new_context(ignore_https_errors=True, viewport=viewport or DESKTOP)
    try:
        if origin is not None:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        context.set_default_timeout(15_000)
        yield context
    finally:
        context.close()


@contextmanager
def chromium(*, viewport: dict[str, int] | None = None, origin: str | None = None) -> Iterator[BrowserContext]:
    """A browser of its own with one fresh context (`make screenshots`)."""
    with launched() as browser, fresh_context(browser, viewport=viewport, origin=origin) as context:
        yield context
