"""The quickstart end to end through the real gateway: a throwaway team with a tiny limit, a key,
a model call (200 with usage), calls until 429, revocation (401 within a bounded wait), and the
team's deletion, which runs whatever happened before it.

Every wait is bounded: a new key may take a moment to reach Authorino (`auth_wait`), a token
limit to reach Limitador (`limit_tries` calls), a revocation to reach Authorino's Secret watcher
(`revoke_wait`). The API key and the admin key are registered with the report, which never
prints them.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tools.cluster_report import Report

SECTION = "end to end"
TEAM_PREFIX = "cluster-check-"
USER_ID = "cluster-check"


@dataclass
class Options:
    admin_url: str
    gateway_url: str  # the models' host: calls go to <gateway_url>/<model>/v1/chat/completions
    admin_key: str
    verify: ssl.SSLContext | bool
    model: str | None = None
    token_limit: int = 1
    auth_wait: float = 30.0
    revoke_wait: float = 30.0
    limit_tries: int = 10
    interval: float = 1.0
    timeout: float = 60.0


class StepFailed(Exception):
    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def _excerpt(response: httpx.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _tokens(count: int) -> str:
    return f"{count} token" + ("" if count == 1 else "s")


def _transport_fix(exc: Exception, which: str) -> str:
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return f"the {which} certificate is not trusted: pass --ca-file <its CA, PEM> (or --insecure to skip the check)"
    if isinstance(exc, httpx.TimeoutException):
        return f"the {which} did not answer in time: check the URL, the Gateway and the Knative Services (cold start?)"
    return f"check the {which} URL (DNS, the Gateway's address and listener, a port-forward)"


class EndToEnd:
    def __init__(self, options: Options, report: Report, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.o, self.report, self.clock, self.sleep = options, report, clock, sleep
        report.secret(options.admin_key)
        self.admin = httpx.Client(base_url=options.admin_url.rstrip("/"), verify=options.verify,
                                  timeout=options.timeout)
        self.models = httpx.Client(verify=options.verify, timeout=options.timeout)
        self.team_id: str | None = None
        self.api_key: str | None = None
        self.secret_name: str | None = None
        self.model: str | None = None
        self.call_url: str | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def step(self, name: str, action: Callable[[], str], *, fix: str = "") -> bool:
        started = self.clock()
        try:
            detail = action()
        except StepFailed as failed:
            self.report.add(SECTION, name, "FAIL", failed.detail, failed.fix or fix, self.clock() - started)
            return False
        except httpx.HTTPError as exc:
            which = "admin API" if isinstance(exc, httpx.RequestError) and self._is_admin(exc) else "gateway"
            hint = _transport_fix(exc, which) + (f"; {fix}" if fix else "")
            try:
                where = f" ({exc.request.method} {exc.request.url})"
            except RuntimeError:
                where = ""
            self.report.add(SECTION, name, "FAIL", f"{type(exc).__name__}: {exc}{where}", hint, self.clock() - started)
            return False
        self.report.add(SECTION, name, "ok", detail, seconds=self.clock() - started)
        return True

    def _is_admin(self, exc: httpx.RequestError) -> bool:
        try:
            return str(exc.request.url).startswith(str(self.admin.base_url).rstrip("/"))
        except RuntimeError:
            return False

    def skip(self, name: str, why: str) -> None:
        self.report.add(SECTION, name, "skip", why)

    def admin_call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"ADMIN {self.o.admin_key}"}
        return self.admin.request(method, path, json=body, headers=headers)

    @staticmethod
    def expect(response: httpx.Response, status: int, what: str, fix: str = "") -> Any:
        if response.status_code != status:
            raise StepFailed(f"{what}: {response.status_code}, expected {status}: {_excerpt(response)}", fix)
        try:
            return response.json()
        except ValueError:
            raise StepFailed(f"{what}: {status} but not JSON: {_excerpt(response)}", fix) from None

    def call_model(self) -> httpx.Response:
        assert self.call_url is not None and self.api_key is not None
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
        return self.models.post(self.call_url, json=body, headers={"Authorization": f"APIKEY {self.api_key}"})

    # -- the steps -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            if not self.step("admin API", self.health):
                return
            if not self.step("admin key", self.admin_key_accepted):
                return
            if not self.step("model", self.pick_model):
                return
            try:
                self.run_with_team()
            finally:
                self.cleanup()
        finally:
            self.admin.close()
            self.models.close()

    def run_with_team(self) -> None:
        if not self.step("create team", self.create_team):
            return
        if not self.step("issue key", self.issue_key):
            for name in ("model call", "token limit", "revoke key", "revoked key refused"):
                self.skip(name, "no key")
            return
        called = self.step("model call", self.first_call)
        if called:
            self.step("token limit", self.until_limited)
        else:
            self.skip("token limit", "the model call did not succeed")
        revoked = self.step("revoke key", self.revoke)
        if revoked and called:
            self.step("revoked key refused", self.until_refused)
        else:
            self.skip("revoked key refused", "needs a key that worked and was revoked")

    def health(self) -> str:
        response = self.admin.get("/health")
        if response.status_code != 200:
            raise StepFailed(f"GET /health: {response.status_code}: {_excerpt(response)}",
                             "check that the key manager's Knative Services are Ready and the HTTPRoute attached")
        return f"{self.o.admin_url} answers GET /health"

    def admin_key_accepted(self) -> str:
        response = self.admin_call("GET", "/teams")
        self.expect(response, 200, "GET /teams with the admin key",
                    "use the value of the maas-admin-key Secret (ADMIN_KEY or --admin-key-file); after rotating it, "
                    "start new revisions of the functions (docs/DEPLOY.md)")
        return "accepted"

    def pick_model(self) -> str:
        listed = self.expect(self.admin_call("GET", "/models"), 200, "GET /models").get("models") or []
        if self.o.model:
            chosen = next((m for m in listed if m.get("name") == self.o.model), None)
            if chosen is None:
                raise StepFailed(f"--model {self.o.model} is not listed by GET /models",
                                 "deploy it as an InferenceService in MAAS_NAMESPACE, or pick one GET /models lists")
            if not chosen.get("ready"):
                raise StepFailed(f"{self.o.model} is listed but not ready",
                                 "kubectl describe inferenceservice/llminferenceservice of the model")
        else:
            chosen = next((m for m in listed if m.get("ready")), None)
            if chosen is None:
                raise StepFailed(f"no ready model among {len(listed)} listed by GET /models",
                                 "deploy a model (a KServe InferenceService in MAAS_NAMESPACE) or pass --model")
        self.model = str(chosen["name"])
        # The URL users call on the `maas-models` route (docs/DEPLOY.md, "One route for all models");
        # the local gateway serves the same path.
        self.call_url = f"{self.o.gateway_url.rstrip('/')}/{self.model}/v1/chat/completions"
        return f"{self.model}, called at {self.call_url}"

    def create_team(self) -> str:
        self.team_id = TEAM_PREFIX + secrets.token_hex(4)
        body = {
            "team_id": self.team_id, "team_name": "make cluster-check",
            "description": "temporary team of make cluster-check; deleted by it, safe to delete",
            "token_limit": self.o.token_limit, "time_window": "1h",
        }
        self.expect(self.admin_call("POST", "/teams", body), 201, "POST /teams")
        return f"{self.team_id}, a limit of {_tokens(self.o.token_limit)} per hour"

    def issue_key(self) -> str:
        answer = self.expect(self.admin_call("POST", f"/teams/{self.team_id}/keys",
                                             {"user_id": USER_ID, "alias": "cluster-check"}), 201, "POST /teams/{id}/keys")
        self.api_key = str(answer.get("api_key") or "")
        self.report.secret(self.api_key)
        self.secret_name = str(answer.get("secret_name") or "")
        if not self.api_key or not self.secret_name:
            raise StepFailed("the answer has no api_key or secret_name")
        return f"{self.secret_name} (the key itself is not shown)"

    def first_call(self) -> str:
        started = self.clock()
        while True:
            response = self.call_model()
            if response.status_code != 401 or self.clock() - started >= self.o.auth_wait:
                break
            self.sleep(self.o.interval)
        waited = self.clock() - started
        if response.status_code == 401:
            raise StepFailed(
                f"the gateway still answers 401 to the new key after {self.o.auth_wait:.0f} s",
                "Authorino does not see the key Secret: check the 'authorino' and 'authorino secret selector' "
                "prerequisites (clusterWide, secretLabelSelectors vs MAAS_AUTHORINO_SECRET_LABEL) and that "
                "AuthPolicy maas-api-keys is Enforced",
            )
        if response.status_code == 404:
            raise StepFailed(f"404 from {self.call_url}: {_excerpt(response)}",
                             "no route to the model there: check --gateway-url, and that HTTPRoute maas-models "
                             "has a rule for the model (it is applied at the next policy sync after the model is Ready)")
        if response.status_code != 200:
            raise StepFailed(f"{response.status_code}, expected 200: {_excerpt(response)}",
                             "check the model server and the Gateway's logs")
        try:
            tokens = (response.json().get("usage") or {}).get("total_tokens")
        except (ValueError, AttributeError):
            tokens = None
        if not isinstance(tokens, int) or tokens <= 0:
            raise StepFailed(f"200 without usage.total_tokens: {_excerpt(response)}",
                             "Limitador charges usage.total_tokens of the answer: the model server must report usage")
        return f"200, {tokens} tokens" + (f" (key accepted after {waited:.1f} s)" if waited >= self.o.interval else "")

    def until_limited(self) -> str:
        seen: list[int] = []
        for attempt in range(1, self.o.limit_tries + 1):
            response = self.call_model()
            seen.append(response.status_code)
            if response.status_code == 429:
                return f"429 on call {attempt} after the first (limit {_tokens(self.o.token_limit)})"
            if response.status_code not in (200, 429):
                raise StepFailed(f"call {attempt}: {response.status_code}: {_excerpt(response)}")
            self.sleep(self.o.interval)
        raise StepFailed(
            f"no 429 in {self.o.limit_tries} calls over a limit of {_tokens(self.o.token_limit)} (answers: "
            f"{', '.join(map(str, seen))})",
            "the token limit is not enforced: check `kubectl get tokenratelimitpolicy maas-team-token-limits -o yaml` "
            "in the Gateway's namespace (status.conditions), that Limitador is Ready, and that the model's HTTPRoute "
            "is on the Gateway the policy targets",
        )

    def revoke(self) -> str:
        answer = self.expect(self.admin_call("POST", f"/keys/{self.secret_name}/revoke"), 200, "POST /keys/{name}/revoke")
        return f"status {answer.get('status', '?')}"

    def until_refused(self) -> str:
        started = self.clock()
        while True:
            response = self.call_model()
            if response.status_code == 401:
                return f"401 after {self.clock() - started:.1f} s"
            if self.clock() - started >= self.o.revoke_wait:
                break
            self.sleep(self.o.interval)
        raise StepFailed(
            f"the revoked key still gets {response.status_code} after {self.o.revoke_wait:.0f} s, expected 401",
            "Authorino does not hear of the Secret change: its secretLabelSelectors must match the label our keys "
            "carry (MAAS_AUTHORINO_SECRET_LABEL), see the 'authorino secret selector' prerequisite",
        )

    def cleanup(self) -> None:
        if self.team_id is None:
            return
        team = self.team_id

        by_hand = (f"delete it yourself: curl -X DELETE {self.o.admin_url.rstrip('/')}/teams/{team} "
                   '-H "Authorization: ADMIN $ADMIN_KEY"')

        def delete() -> str:
            response = self.admin_call("DELETE", f"/teams/{team}")
            if response.status_code == 404:
                return f"{team} was not there"
            answer = self.expect(response, 200, f"DELETE /teams/{team}", by_hand)
            return f"{team} and {answer.get('keys_deleted', 0)} key(s) deleted"

        self.step("delete team", delete, fix=by_hand)
