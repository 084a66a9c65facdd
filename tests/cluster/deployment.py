"""The admin API's function targets on the Kubernetes store against the API server double, with
the policy sync after every change, as in a cluster: what the engines' models are fed by."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import SecretStr

from functions._context import install_context, reset_context
from shared.context import Context
from shared.keymaterial import generate_admin_key
from shared.kubeapply import policy_syncer
from shared.settings import Settings
from shared.store.kube import KubernetesStore
from tests.admin_client import DirectClient
from tests.kube_double import KubeDouble, running_double

NS = "llm"


@contextmanager
def deployed(**settings_fields: object) -> Iterator[tuple[KubeDouble, DirectClient, Settings]]:
    """(double, admin client, settings); by default keys, functions, Gateway and policies all in
    `llm`. `keys_namespace=...` puts the store (teams, keys, audit entries) in a namespace of its
    own, as MAAS_KEYS_NAMESPACE does in a cluster."""
    admin_key = generate_admin_key()
    settings = Settings(admin_key=SecretStr(admin_key), store="kubernetes",
                        **{"namespace": NS, **settings_fields})  # type: ignore[arg-type]
    with running_double() as (double, client):
        store = KubernetesStore(client, namespace=settings.store_namespace, key_selector=settings.key_selector,
                                watch_label=settings.authorino_watch_label)
        install_context(Context(settings=settings, store=store, teams_changed=policy_syncer(store, settings)))
        try:
            yield double, DirectClient(admin_key), settings
        finally:
            reset_context()


def new_key(api: DirectClient, team_id: str = "alpha", **fields: object) -> dict:
    """A key for alice in `team_id` (made with a 1,000-token team if it does not exist)."""
    if api.call("GET", f"/teams/{team_id}").status == 404:
        made = api.call("POST", "/teams", json={"team_id": team_id, "team_name": team_id, "token_limit": 1000})
        assert made.status == 201, made.text
    reply = api.call("POST", f"/teams/{team_id}/keys",
                     json={"user_id": "alice", "user_email": "alice@example.com", **fields})
    assert reply.status == 201, reply.text
    return reply.body
