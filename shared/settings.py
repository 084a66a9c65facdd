"""Every setting of the product, read from the environment here and nowhere else.

The environment is read as pydantic-settings read it (the same variables, the same precedence,
the same errors; tests/test_coldstart_settings.py holds the two side by side), by a few lines
of our own: importing pydantic-settings cost every function target ~30 ms of its cold start
(issue 12), for a source of environment variables we use nothing else of.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo

from shared.durations import normalize_window, window_ms


def weak_admin_key(secret: str) -> bool:
    """The manifests' placeholder, or too short to be a random secret."""
    return "REPLACE-ME" in secret.upper() or len(secret) < 16


def _names(name: str, field: FieldInfo) -> tuple[str, ...]:
    """The names that set a field, preferred first: its variables, then the field's own name
    (populate_by_name; case aside, `ADMIN_KEY` is both)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return (*(choice for choice in alias.choices if isinstance(choice, str)), name)
    return (alias, name) if isinstance(alias, str) else (name,)


def _input(model: type[BaseModel], given: Mapping[str, object]) -> dict[str, object]:
    """What pydantic-settings handed its model, built its way, since the keys are what a
    validation error's `loc` names: the values given to `Settings(...)`, each under its field's
    first name; over what the environment sets (each field's first name found, case aside,
    under its first name, or under the field's own name when found by it); then a given value
    keeps the key it was given under when that is one of its field's names as spelled."""
    fields = {name: _names(name, field) for name, field in model.model_fields.items()}
    arguments: dict[str, object] = {}
    left = dict(given)
    for names in fields.values():
        folded = [candidate.lower() for candidate in names]
        matches = sorted((key for key in left if key.lower() in folded), key=lambda key: folded.index(key.lower()))
        if matches:  # the first name's in preference order (then in given order: sorted is stable)
            arguments[names[0]] = left[matches[0]]
            for key in matches:
                del left[key]
    arguments.update(left)  # no setting's: `extra="ignore"` drops them
    environment = {key.lower(): value for key, value in os.environ.items()}
    found: dict[str, object] = {}
    for name, names in fields.items():
        for candidate in names:
            value = environment.get(candidate.lower())
            if value is not None:
                found[name if candidate == name else names[0]] = value
                break
    values = {**found, **arguments}
    for names in fields.values():
        spelled = [key for key in given if key in names]
        present = [key for key in names if key in values]
        if spelled and present:
            value = values[present[0]]
            for key in present:
                del values[key]
            values[spelled[0]] = value
    return values


class Settings(BaseModel):
    """Built once by `Settings()` (from the environment) and passed down. `Settings(x=...)`
    and `Settings.model_validate({...})` (pydantic calls an overridden __init__) set x over
    the environment."""

    # validate_default: as pydantic-settings did, so the defaults pass the validators below too.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, validate_default=True)

    def __init__(self, **given: object) -> None:
        super().__init__(**_input(type(self), given))

    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias="ADMIN_KEY",
        description="The admin credential. Unset means no admin access (fail closed).",
    )
    store: Literal["embedded", "kubernetes"] = Field(
        default="embedded",
        validation_alias="MAAS_STORE",
        description="Where teams and keys live: SQLite (embedded) or Kubernetes Secrets.",
    )
    data_dir: Path = Field(
        default=Path(".maas"),
        validation_alias="MAAS_DATA_DIR",
        description="Embedded deployment's state: SQLite files, the generated admin key, TLS files.",
    )
    namespace: str = Field(
        default="llm",
        validation_alias=AliasChoices("MAAS_NAMESPACE", "NAMESPACE"),
        description="Kubernetes namespace of the functions, maas-admin-key and the models (and, unless "
        "MAAS_KEYS_NAMESPACE says otherwise, of the team and key Secrets).",
    )
    keys_namespace: str | None = Field(
        default=None,
        validation_alias="MAAS_KEYS_NAMESPACE",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Namespace of the team and key Secrets and the audit ConfigMaps, apart from the "
        "functions and maas-admin-key (RBAC cannot narrow Secrets by label); default: MAAS_NAMESPACE.",
    )
    key_selector: str = Field(
        default="maas-api-key",
        validation_alias="MAAS_KEY_SELECTOR",
        description="Value of the `app` label that the AuthPolicy selects API-key Secrets by.",
    )
    authorino_secret_label: str = Field(
        default="authorino.kuadrant.io/managed-by=authorino",
        validation_alias="MAAS_AUTHORINO_SECRET_LABEL",
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_./]{0,252}=[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
        description=(
            "The label Authorino's Secret watcher selects by (its --secret-label-selector), as "
            "key=value; every key Secret carries it, or Authorino never sees keys change."
        ),
    )
    gateway_name: str = Field(
        default="maas-gateway",
        validation_alias="MAAS_GATEWAY_NAME",
        description="Gateway API Gateway that serves the models; the Kuadrant policies target it.",
    )
    gateway_namespace: str | None = Field(
        default=None,
        validation_alias="MAAS_GATEWAY_NAMESPACE",
        description="Namespace of that Gateway (and so of the policies); default: MAAS_NAMESPACE.",
    )
    api_hostname: str | None = Field(
        default=None,
        validation_alias="MAAS_API_HOSTNAME",
        description="Host name of the key manager's HTTPRoute in a cluster; unset: every host.",
    )
    models_hostname: str | None = Field(
        default=None,
        validation_alias="MAAS_MODELS_HOSTNAME",
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Host name of the `maas-models` HTTPRoute (one rule per model, `/<model>/v1/...`) "
        "in a cluster; unset: every host.",
    )
    route_rule_names: bool = Field(
        default=True,
        validation_alias="MAAS_ROUTE_RULE_NAMES",
        description="Name the key manager's HTTPRoute rules (Gateway API >= v1.4 standard channel, or "
        "experimental >= v1.2); false for older Gateway API CRDs, which do not know `rules[].name`.",
    )
    route_backend_service: str | None = Field(
        default=None,
        validation_alias="MAAS_ROUTE_BACKEND_SERVICE",
        description="Service every key manager HTTPRoute rule sends to (with a Host rewrite to the "
        "function), e.g. `knative-local-gateway`; unset: each function's own Knative Service "
        "(an ExternalName Service, which Istio follows and Envoy Gateway does not).",
    )
    route_backend_namespace: str | None = Field(
        default=None,
        validation_alias="MAAS_ROUTE_BACKEND_NAMESPACE",
        description="Namespace of MAAS_ROUTE_BACKEND_SERVICE (a ReferenceGrant is rendered there); "
        "default: MAAS_NAMESPACE.",
    )
    route_backend_port: int = Field(
        default=80, validation_alias="MAAS_ROUTE_BACKEND_PORT", ge=1, le=65535,
        description="Port of MAAS_ROUTE_BACKEND_SERVICE.",
    )
    host: str = Field(
        default="127.0.0.1", validation_alias="MAAS_HOST", description="Address the local runtime binds."
    )
    admin_port: int = Field(
        default=8443, validation_alias="MAAS_ADMIN_PORT", ge=0, le=65535,
        description="Port of the local admin API (TLS); 0 picks a free one.",
    )
    gateway_port: int = Field(
        default=8000, validation_alias="MAAS_GATEWAY_PORT", ge=0, le=65535,
        description="Port of the local model gateway; 0 picks a free one.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        validation_alias="MAAS_MAX_BODY_BYTES",
        ge=1024,
        description="Largest admin request body accepted; larger ones get 413.",
    )
    models_file: Path | None = Field(
        default=None,
        validation_alias="MAAS_MODELS_FILE",
        description="YAML list of model backends for the local gateway; default: the simulator.",
    )
    simulator_port: int = Field(
        default=8001,
        validation_alias="MAAS_SIMULATOR_PORT",
        ge=0,
        le=65535,
        description="Port of the built-in model simulator; the default models file points at it.",
    )
    upstream_timeout_s: float = Field(
        default=300.0,
        validation_alias="MAAS_UPSTREAM_TIMEOUT",
        gt=0,
        description="Gateway: longest wait for a model backend's headers or next stream chunk (504 after).",
    )
    last_used_interval_s: float = Field(
        default=5.0,
        validation_alias="MAAS_LAST_USED_INTERVAL",
        gt=0,
        description="Gateway: seconds between the batched writes of keys' last_used_at.",
    )
    gateway_max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        validation_alias="MAAS_GATEWAY_MAX_BODY_BYTES",
        ge=1024,
        description="Gateway: largest model-call request body accepted; larger ones get 413.",
    )
    gateway_client_timeout_s: float = Field(
        default=60.0,
        validation_alias="MAAS_GATEWAY_CLIENT_TIMEOUT",
        gt=0,
        description=(
            "Gateway: seconds a client may send nothing while it owes the rest of a request "
            "(then 408) or holds an idle connection (then closed)."
        ),
    )
    metrics_port: int = Field(
        default=8002, validation_alias="MAAS_METRICS_PORT", ge=0, le=65535,
        description="Port of the local gateway's /metrics (on MAAS_HOST, apart from the model port so "
        "that key holders cannot list every team and user); 0 picks a free one.",
    )
    gateway_max_connections: int = Field(
        default=1000, validation_alias="MAAS_GATEWAY_MAX_CONNECTIONS", ge=1,
        description="Gateway: most client connections open at once; more wait in the listen queue.",
    )
    gateway_drain_timeout_s: float = Field(
        default=10.0, validation_alias="MAAS_GATEWAY_DRAIN_TIMEOUT", ge=0, le=3600,
        description="Gateway: at a stop, seconds the calls in flight get to finish (new connections are "
        "refused, new requests get 503); those still running then are cut off and charged what they relayed.",
    )
    access_log: bool = Field(
        default=True, validation_alias="MAAS_ACCESS_LOG",
        description="Gateway: one log line per request (method, path, status, model, team, user, tokens, "
        "duration; never the key), written off the request path.",
    )
    redis_url: str | None = Field(
        default=None, validation_alias="MAAS_REDIS_URL",
        description="Gateway: keep the token counters in this Redis (redis://host:port/db), shared by every "
        "gateway that names it; unset: in the process, saved to the data dir every second.",
    )
    redis_timeout_s: float = Field(
        default=1.0, validation_alias="MAAS_REDIS_TIMEOUT", gt=0,
        description="Gateway: seconds before a Redis call gives up; model calls then fail closed with 503.",
    )
    usage: Literal["embedded", "prometheus"] = Field(
        default="embedded",
        validation_alias="MAAS_USAGE",
        description="Where usage numbers come from: the gateway's ledger or Prometheus.",
    )
    prometheus_url: str = Field(
        default="http://127.0.0.1:9090", validation_alias="PROMETHEUS_URL",
        description="Prometheus holding Limitador's (or the gateway's) usage metrics.",
    )
    prometheus_timeout_s: float = Field(
        default=5.0, validation_alias="MAAS_PROMETHEUS_TIMEOUT", gt=0,
        description="Seconds before a Prometheus query gives up with 503.",
    )
    limitador_url: str | None = Field(
        default=None, validation_alias="MAAS_LIMITADOR_URL",
        description="Limitador's HTTP API (port 8080 of its Service, e.g. "
                    "http://limitador-limitador.kuadrant-system.svc:8080): explain reads a cluster's "
                    "counters there; unset, a cluster's explain shows the limits without counters.",
    )

    expired_key_retention: str = Field(
        default="168h",
        validation_alias="MAAS_EXPIRED_KEY_RETENTION",
        description="How long the cleanup sweep keeps an expired key listed (status 'expired') before "
        "deleting it; a duration such as '168h' or '7d'.",
    )
    audit_retention: str = Field(
        default="2160h",
        validation_alias="MAAS_AUDIT_RETENTION",
        description="How long audit entries are kept before the cleanup sweep prunes them ('90d').",
    )
    cleanup_interval_s: float = Field(
        default=60.0,
        validation_alias="MAAS_CLEANUP_INTERVAL",
        gt=0,
        description="Embedded deployment: seconds between the in-process cleanup sweeps (the PingSource's role).",
    )

    # The admin API's server (local/adminserver.py), the same in `make run` and in the image.
    admin_threads: int = Field(
        default=8, validation_alias="MAAS_ADMIN_THREADS", ge=1, le=256,
        description="Admin API: threads serving requests, the most answered at once; a request that has "
        "fully arrived waits for one (idle clients, and those still sending, hold none).",
    )
    admin_max_connections: int = Field(
        default=256, validation_alias="MAAS_ADMIN_MAX_CONNECTIONS", ge=2, le=10_000,
        description="Admin API: most client connections open at once; more wait in the listen queue.",
    )
    admin_idle_timeout_s: float = Field(
        default=5.0, validation_alias="MAAS_ADMIN_IDLE_TIMEOUT", gt=0, le=3600,
        description="Admin API: seconds a connection may wait for its first or next request (keep-alive) "
        "before it is closed.",
    )
    admin_header_timeout_s: float = Field(
        default=10.0, validation_alias="MAAS_ADMIN_HEADER_TIMEOUT", gt=0, le=3600,
        description="Admin API: seconds from a client's first byte to the end of its TLS handshake, and "
        "from a request's first byte to the end of its headers; slower clients get 408 and are cut off.",
    )
    admin_body_timeout_s: float = Field(
        default=10.0, validation_alias="MAAS_ADMIN_BODY_TIMEOUT", gt=0, le=3600,
        description="Admin API: seconds to receive a request's body after its headers, and for each send "
        "of the response.",
    )

    # OpenID Connect sign-in to the admin API (shared/oidc.py): people bring their provider's token.
    # The audience comes first: the issuer's validator reads it.
    oidc_audience: str | None = Field(
        default=None, validation_alias="MAAS_OIDC_AUDIENCE",
        description="Admin API: the audience an OIDC token must name in `aud`, usually the client id "
        "registered at the provider; required with MAAS_OIDC_ISSUER.",
    )
    oidc_issuer: str | None = Field(
        default=None, validation_alias="MAAS_OIDC_ISSUER",
        description="Admin API: the OpenID Connect issuer whose tokens (`Authorization: Bearer <JWT>`) sign "
        "people in, exactly as its tokens' `iss` says (https; plain http only on a loopback address); its "
        "discovery document and keys are fetched on the first token. Unset: OIDC sign-in is off.",
    )
    oidc_user_claim: str = Field(
        default="sub", validation_alias="MAAS_OIDC_USER_CLAIM", min_length=1,
        description="Admin API: the OIDC token claim holding the user id (e.g. `preferred_username`).",
    )
    oidc_email_claim: str = Field(
        default="email", validation_alias="MAAS_OIDC_EMAIL_CLAIM", min_length=1,
        description="Admin API: the OIDC token claim holding the user's email address (optional in a token).",
    )
    oidc_groups_claim: str = Field(
        default="groups", validation_alias="MAAS_OIDC_GROUPS_CLAIM", min_length=1,
        description="Admin API: the OIDC token claim holding the user's groups, a list of strings (absent: none).",
    )
    oidc_ca_file: Path | None = Field(
        default=None, validation_alias="MAAS_OIDC_CA_FILE",
        description="Admin API: PEM bundle of the CAs to trust for an https issuer with a private CA; "
        "unset: the system's CAs.",
    )
    admin_groups_list: str = Field(
        default="", validation_alias="MAAS_ADMIN_GROUPS",
        description="Admin API: comma-separated identity-provider groups whose members are platform admins "
        "(from the OIDC groups claim). Empty: only the admin key (and, in a cluster, a SubjectAccessReview).",
    )
    team_group_pattern: str | None = Field(
        default=None, validation_alias="MAAS_TEAM_GROUP_PATTERN", pattern=r"^[^{}]*\{team_id\}[^{}]*$",
        description="Admin API: identity-provider groups that make their members members of a team, e.g. "
        "`/maas/{team_id}`. Unset: memberships are only those stored.",
    )
    team_admin_group_pattern: str | None = Field(
        default=None, validation_alias="MAAS_TEAM_ADMIN_GROUP_PATTERN", pattern=r"^[^{}]*\{team_id\}[^{}]*$",
        description="Admin API: groups that make their members admins of a team, e.g. `/maas/{team_id}/admins`; "
        "no group may fit both patterns (give their fixed parts a character team ids lack: `/`, `.`, `:`).",
    )
    kubernetes_sign_in: bool = Field(
        default=True, validation_alias="MAAS_KUBERNETES_SIGN_IN",
        description="Admin API in a cluster (MAAS_STORE=kubernetes): accept Kubernetes/OpenShift user tokens "
        "(TokenReview); platform admins by SubjectAccessReview on `admin` `teams.maas.opendatahub.io`.",
    )

    # The web console (functions/console).
    console_session_ttl: str = Field(
        default="8h", validation_alias="MAAS_CONSOLE_SESSION_TTL",
        description="Console: how long a sign-in lasts ('8h'); then the person signs in again. Sessions are "
        "kept in the console's process: one process (make run; in a cluster the console runs as one pod).",
    )
    console_url: str | None = Field(
        default=None, validation_alias="MAAS_CONSOLE_URL", pattern=r"^https://[^/?#\s]+$",
        description="Console: its address as browsers see it (https://maas.example.com), where the identity "
        "provider sends people back (<it>/console/oidc/callback, registered at the provider as the client's "
        "redirect URI); unset: the address of the request, right for make run but not behind a gateway "
        "that rewrites the Host.",
    )

    @field_validator("oidc_issuer", "oidc_audience", "oidc_ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Manifests and .env files often carry `MAAS_OIDC_ISSUER=`: that means off, not an empty URL.
        return None if value == "" else value

    @field_validator("console_url", mode="before")
    @classmethod
    def _console_url_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("oidc_issuer")
    @classmethod
    def _oidc_issuer(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:  # pydantic-settings validates defaults too: unset must not import PyJWT
            return value
        from shared.oidc import issuer_problem  # here, so that reading settings never imports PyJWT

        problem = issuer_problem(value)
        if problem is not None:
            raise ValueError(f"the OIDC issuer {problem}")
        # Without an audience any token of the provider's, issued to any of its apps, would sign in.
        if info.data.get("oidc_audience") is None:
            raise ValueError("needs MAAS_OIDC_AUDIENCE too: the client id the provider puts in its tokens' aud")
        return value

    @field_validator("team_admin_group_pattern")
    @classmethod
    def _unambiguous_groups(cls, value: str | None, info: ValidationInfo) -> str | None:
        members = info.data.get("team_group_pattern")
        if value is None or members is None:
            return value
        from shared.access import team_in_group

        # Team ids are DNS labels: with `maas-{team_id}` beside `maas-{team_id}-admins`, the
        # admins' group of t1 is also the members' group of a team named t1-admins.
        for sample in ("t1", "team-a"):
            if team_in_group(value.replace("{team_id}", sample), members) is not None:
                raise ValueError(f"a group may fit both MAAS_TEAM_GROUP_PATTERN ({members}) and this pattern: give "
                                 "their fixed parts a character team ids lack, e.g. /maas/{team_id} and "
                                 "/maas/{team_id}/admins")
        return value

    @field_validator("admin_key")
    @classmethod
    def _real_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Fail closed on the manifests' placeholder or a guessable key, rather than serve with it.
        if value is not None and weak_admin_key(value.get_secret_value()):
            raise ValueError("ADMIN_KEY must be a random secret of at least 16 characters, not a placeholder")
        return value

    @field_validator("expired_key_retention", "audit_retention", "console_session_ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        return normalize_window(value)

    @property
    def authorino_watch_label(self) -> tuple[str, str]:
        key, _, value = self.authorino_secret_label.partition("=")
        return key, value

    @property
    def console_session_ttl_s(self) -> float:
        return window_ms(self.console_session_ttl) / 1000

    @property
    def admin_groups(self) -> tuple[str, ...]:
        return tuple(group.strip() for group in self.admin_groups_list.split(",") if group.strip())

    @property
    def store_namespace(self) -> str:
        """Where the store's objects are: team and key Secrets, audit ConfigMaps."""
        return self.keys_namespace or self.namespace

    @property
    def policy_namespace(self) -> str:
        """Kuadrant policies live beside the Gateway they target."""
        return self.gateway_namespace or self.namespace

    @property
    def database_path(self) -> Path:
        return self.data_dir / "maas.db"

    @property
    def limits_path(self) -> Path:
        """The in-process token counters, saved every second (not used with MAAS_REDIS_URL)."""
        return self.data_dir / "limits.db"

    @property
    def usage_ledger_path(self) -> Path:
        """The local gateway's usage ledger."""
        return self.data_dir / "usage.db"


class ConfigurationError(ValueError):
    """Settings that cannot be used; the message names each variable and never echoes values."""


def load_settings() -> Settings:
    """Settings from the environment, with errors that are safe to print (no secret values)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
