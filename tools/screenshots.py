"""`make screenshots`: PNGs of the console's main pages into docs/screenshots/, for the README.

Starts its own runtime on free ports with a throwaway data dir and a test identity provider (the
test harness: tests/runtime.py, tests/oidc_provider.py, tests/browser.py), fills it with a few
teams, keys and model calls (a few of them refused for a team's limit), and photographs the
pages at 1280 px wide (and three at a phone's width) in Debian's Chromium. The one page that shows a key has it masked: no screenshot shows a
key, even a throwaway one.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext, Page

from shared.keymaterial import generate_admin_key
from tests.browser import PHONE, chromium
from tests.oidc_provider import node_binary, OidcProvider
from tests.runtime import ROOT, Runtime, start_runtime

OUT = ROOT / "docs" / "screenshots"
MODELS = ("qwen3-0-6b-instruct", "vllm-simulator")


def _api(runtime: Runtime, admin_key: str) -> httpx.Client:
    return httpx.Client(base_url=runtime.admin_url, verify=False, timeout=30,
                        headers={"Authorization": f"ADMIN {admin_key}"})


def _seed(runtime: Runtime, admin_key: str) -> None:
    with _api(runtime, admin_key) as api:
        for team_id, name, limit, window in (("data-science", "Data Science", 200000, "1h"),
                                             ("platform-eng", "Platform Engineering", 50000, "1h"),
                                             ("research", "Research", 1000000, "24h"),
                                             ("interns", "Interns", 150, "1h")):
            api.post("/teams", json={"team_id": team_id, "team_name": name, "token_limit": limit,
                                     "time_window": window}).raise_for_status()
        api.post("/teams/data-science/members", json={"user_id": "mona", "user_email": "mona@example.com",
                                                      "role": "member"}).raise_for_status()
        api.post("/teams/data-science/members", json={"user_id": "tara", "role": "admin"}).raise_for_status()
        # Several rates, so that the team page shows a list and explain has limits to compare.
        api.patch("/teams/data-science", json={"limits": [
            {"name": "tokens", "limit": 200000, "window": "1h"},
            {"name": "per-minute", "limit": 20000, "window": "1m"},
            {"name": "rpm", "limit": 60, "window": "1m", "unit": "requests"},
            {"name": "team-daily", "limit": 2000000, "window": "24h", "scope": "team"},
            {"name": "large-model", "limit": 50000, "window": "1h", "model": MODELS[1]}]}).raise_for_status()
        # An update, so that the audit log shows what one changed.
        api.patch("/teams/platform-eng", json={"token_limit": 60000, "max_keys_per_user": 3}).raise_for_status()
        keys = []
        for team_id, user, alias in (("data-science", "mona", "notebook"), ("data-science", "mona", "laptop"),
                                     ("data-science", "omar", "pipeline"), ("platform-eng", "lee", "ci"),
                                     ("research", "ana", "eval"), ("interns", "ivy", "first-try")):
            answer = api.post(f"/teams/{team_id}/keys", json={"user_id": user, "alias": alias, "expires_in": "90d"})
            answer.raise_for_status()
            keys.append(answer.json()["api_key"])
    with httpx.Client(base_url=runtime.urls["gateway"], timeout=30) as gateway:
        for n in range(30):
            key = keys[n % len(keys)]
            answer = gateway.post("/v1/chat/completions", headers={"Authorization": f"APIKEY {key}"}, json={
                "model": MODELS[n % 3 == 0], "max_tokens": 40 + 10 * (n % 5),
                "messages": [{"role": "user", "content": "Hello " * (1 + n % 7)}]})
            if answer.status_code != 429:  # the interns' small limit refuses some: the overview counts them
                answer.raise_for_status()


def _shot(page: Page, name: str, *, mask: Sequence[str] = ()) -> None:
    page.wait_for_load_state("load")
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True,
                    mask=[page.locator(selector) for selector in mask], mask_color="#cbd5e1",
                    animations="disabled")
    print(f"  docs/screenshots/{name}.png")


def _sign_in_with_key(page: Page, runtime: Runtime, admin_key: str) -> None:
    page.goto(runtime.admin_url + "/console/signin")
    page.get_by_label("Admin key").fill(admin_key)
    page.get_by_role("button", name="Sign in with the admin key").click()
    page.wait_for_url(re.compile("/console/keys$"))


def _admin_pages(context: BrowserContext, runtime: Runtime, admin_key: str) -> None:
    page = context.new_page()
    page.goto(runtime.admin_url + "/console/signin")
    _shot(page, "signin")
    _sign_in_with_key(page, runtime, admin_key)
    page.goto(runtime.admin_url + "/console/teams")
    _shot(page, "teams")
    page.goto(runtime.admin_url + "/console/teams?view=overview")
    _shot(page, "overview")
    page.goto(runtime.admin_url + "/console/teams?view=audit&outcome=success")
    _shot(page, "audit")
    page.goto(runtime.admin_url + "/console/teams/data-science?explain_user=mona")
    _shot(page, "team")
    page.get_by_text("Issue a key").click()
    form = page.locator("form[action='/console/teams/data-science/keys']")
    form.get_by_label("User id").fill("omar")
    form.get_by_label("Alias").fill("batch-jobs")
    form.get_by_role("button", name="Issue key").click()
    _shot(page, "key-created", mask=["#new-key"])
    page.goto(runtime.admin_url + "/console/teams/data-science/delete")
    _shot(page, "team-delete")
    page.goto(runtime.admin_url + "/console/teams/data-science?view=usage")
    _shot(page, "team-usage")
    page.goto(runtime.admin_url + "/console/teams/data-science?view=audit&action=create_key")
    _shot(page, "team-audit")


def _member_pages(context: BrowserContext, runtime: Runtime, provider: OidcProvider, name: str = "") -> None:
    provider.login_as(sub="mona", email="mona@example.com")
    page = context.new_page()
    page.goto(runtime.admin_url + "/console/signin/oidc")
    page.wait_for_url(re.compile("/console/keys$"))
    _shot(page, f"my-keys{name}")
    page.goto(runtime.admin_url + "/console/usage")
    _shot(page, f"my-usage{name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshots", description=__doc__)
    parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    admin_key = generate_admin_key()
    with tempfile.TemporaryDirectory(prefix="maas-screenshots-") as workdir:
        provider = OidcProvider(node_binary(), Path(workdir)).start()
        runtime = start_runtime(Path(workdir) / "data", env={
            "ADMIN_KEY": admin_key, "MAAS_OIDC_ISSUER": provider.issuer, "MAAS_OIDC_AUDIENCE": "maas",
            "MAAS_ACCESS_LOG": "false"})
        try:
            _seed(runtime, admin_key)
            with chromium() as context:
                _admin_pages(context, runtime, admin_key)
                _member_pages(context, runtime, provider)
            with chromium(viewport=PHONE) as context:
                _member_pages(context, runtime, provider, "-phone")
            with chromium(viewport=PHONE) as context:
                page = context.new_page()
                _sign_in_with_key(page, runtime, admin_key)
                page.goto(runtime.admin_url + "/console/teams?view=overview")
                _shot(page, "overview-phone")
        finally:
            runtime.stop()
            provider.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
