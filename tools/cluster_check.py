"""Check a live cluster for the key manager: its prerequisites, then the quickstart end to end.

    python -m tools.cluster_check [options]        (`make cluster-check ARGS="..."`)

Part 1 reads the cluster (kubeconfig, or the in-cluster ServiceAccount) and checks what
docs/DEPLOY.md requires: the CRDs and their served versions, the Gateway API version, Kuadrant
with a cluster-wide Authorino whose Secret selector matches our keys, Limitador, the Gateway and
its class, the namespace, the admin key Secret and the key manager's own objects. Part 2 runs the
quickstart through the real gateway with a throwaway team (tools/cluster_e2e.py). Each check is
one line, `ok`, `warn` or `FAIL`, and every FAIL or warn is followed by its fix.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 on a usage error.
The settings are the product's own (MAAS_NAMESPACE, MAAS_GATEWAY_NAME, ... from the environment,
shared/settings.py); no API key and not the admin key is ever printed.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.config.config_exception import ConfigException

from shared.errors import BackendUnavailable
from shared.settings import ConfigurationError, Settings, load_settings
from shared.store.kube import api_client_from_config
from tools.cluster_e2e import SECTION as E2E, EndToEnd, Options
from tools.cluster_prereqs import (
    SECTION as PREREQS,
    Checks,
    Cluster,
    ClusterError,
    derive_admin_url,
    derive_gateway_url,
)
from tools.cluster_report import Report

EXAMPLES = """\
examples:
  # everything, URLs derived from the HTTPRoutes maas-key-manager and maas-models:
  export ADMIN_KEY="$(kubectl -n llm get secret maas-admin-key -o jsonpath='{.data.ADMIN_KEY}' | base64 -d)"
  make cluster-check

  # explicit URLs, a private CA, one model:
  make cluster-check ARGS="--admin-url https://keys.example.com --gateway-url https://models.example.com \\
      --ca-file ca.pem --model qwen3"

  # only the prerequisites, as JSON:
  make cluster-check ARGS="--no-e2e --json"

  # only the end-to-end run against `make run` on this machine:
  .venv/bin/python -m tools.cluster_check --no-prereqs --admin-url https://127.0.0.1:8443 \\
      --gateway-url http://127.0.0.1:8000 --admin-key-file .maas/admin-key --ca-file .maas/tls/cert.pem

settings (environment, as for `make manifests`): MAAS_NAMESPACE, MAAS_GATEWAY_NAME,
MAAS_GATEWAY_NAMESPACE, MAAS_KEY_SELECTOR, MAAS_AUTHORINO_SECRET_LABEL, MAAS_ROUTE_RULE_NAMES,
MAAS_ROUTE_BACKEND_SERVICE/_NAMESPACE/_PORT, MAAS_API_HOSTNAME; ADMIN_KEY for the end-to-end run.

exit status: 0 nothing failed (warnings allowed), 1 a check failed, 2 usage error.
"""


def _positive(kind: type) -> object:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.cluster_check",
        description=(
            "Check a live cluster for the MaaS key manager: (1) its prerequisites (CRDs, Gateway API version, "
            "Kuadrant, Authorino, Limitador, the Gateway, the namespace, the admin key Secret, the Knative "
            "Services), then (2) the quickstart end to end through the real gateway with a throwaway team: "
            "create it with a 1-token limit, issue a key, call a model (200 with usage), call until 429, revoke "
            "the key (401 within a bounded wait), delete the team (always, even after a failure)."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parts = p.add_argument_group("what to run")
    parts.add_argument("--no-e2e", action="store_true", help="only the prerequisites (needs no admin key)")
    parts.add_argument("--no-prereqs", action="store_true",
                       help="only the end-to-end run (reads the cluster only to derive the URLs not given)")
    parts.add_argument("--json", action="store_true", help="print one JSON report instead of lines")
    cluster = p.add_argument_group("cluster access (default: in-cluster ServiceAccount, else $KUBECONFIG or ~/.kube/config)")
    cluster.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file to use")
    cluster.add_argument("--context", metavar="NAME", help="kubeconfig context to use (default: the current one)")
    e2e = p.add_argument_group("end to end")
    e2e.add_argument("--admin-url", metavar="URL",
                     help="the admin API, e.g. https://keys.example.com (default: derived from the HTTPRoute "
                          "maas-key-manager's hostname and the Gateway's listener)")
    e2e.add_argument("--gateway-url", metavar="URL",
                     help="the models' URL through the Gateway, e.g. https://models.example.com; calls are POSTed "
                          "to URL/<model>/v1/chat/completions (default: derived from the HTTPRoute maas-models)")
    e2e.add_argument("--admin-key-file", metavar="PATH",
                     help="file holding the admin key (default: the ADMIN_KEY environment variable); never printed")
    tls = e2e.add_mutually_exclusive_group()
    tls.add_argument("--ca-file", metavar="PATH", help="CA certificate (PEM) to trust for both URLs")
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    e2e.add_argument("--model", metavar="NAME", help="model to call (default: the first ready one from GET /models)")
    e2e.add_argument("--auth-wait", type=_positive(float), default=30.0, metavar="S",
                     help="seconds a new key may take to be accepted by the gateway (default 30)")
    e2e.add_argument("--revoke-wait", type=_positive(float), default=30.0, metavar="S",
                     help="seconds a revoked key may take to be refused, Authorino's watcher latency (default 30)")
    e2e.add_argument("--limit-tries", type=_positive(int), default=10, metavar="N",
                     help="calls after the first one before giving up on a 429 (default 10)")
    e2e.add_argument("--interval", type=_positive(float), default=1.0, metavar="S",
                     help="seconds between repeated calls (default 1)")
    e2e.add_argument("--timeout", type=_positive(float), default=60.0, metavar="S",
                     help="seconds each HTTP request may take (default 60)")
    return p


def _api_client(kubeconfig: str | None, context: str | None) -> ApiClient:
    if kubeconfig is None and context is None:
        return api_client_from_config()
    configuration = Configuration()
    try:
        kube_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise BackendUnavailable(f"cannot use the kubeconfig: {exc}") from exc
    return ApiClient(configuration)


def _admin_key(args: argparse.Namespace, settings: Settings) -> str:
    if args.admin_key_file:
        try:
            value = Path(args.admin_key_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --admin-key-file: {exc.strerror}") from None
        if not value:
            raise UsageError("--admin-key-file is empty")
        return value
    if settings.admin_key is None:
        raise UsageError("the end-to-end run needs the admin key: set ADMIN_KEY or pass --admin-key-file "
                         "(or skip it with --no-e2e)")
    return settings.admin_key.get_secret_value()


def _verify(args: argparse.Namespace) -> ssl.SSLContext | bool:
    if args.insecure:
        return False
    if args.ca_file:
        try:
            return ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load --ca-file {args.ca_file}: {exc}") from None
    return True


class UsageError(Exception):
    pass


def _url(report: Report, cluster: Cluster | None, settings: Settings, name: str, given: str | None,
         derive: Callable[[Cluster, Settings], tuple[str | None, str]], option: str) -> str | None:
    """`given`, else derived from the cluster (one report line either way it is derived)."""
    if given:
        return given
    if cluster is None:
        report.add(E2E, name, "FAIL", "no cluster access to derive it from", f"pass {option}")
        return None
    try:
        url, how = derive(cluster, settings)
    except ClusterError as exc:
        url, how = None, str(exc)
    if url is None:
        report.add(E2E, name, "FAIL", f"cannot derive it: {how}", f"pass {option}")
    else:
        report.add(E2E, name, "ok", f"{url} ({how})")
    return url


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = out or sys.stdout
    try:
        if args.no_e2e and args.no_prereqs:
            raise UsageError("--no-e2e and --no-prereqs together leave nothing to check")
        if args.kubeconfig and not Path(args.kubeconfig).is_file():
            raise UsageError(f"--kubeconfig {args.kubeconfig}: no such file")
        settings = load_settings()
        admin_key = None if args.no_e2e else _admin_key(args, settings)
        verify = _verify(args)
    except (UsageError, ConfigurationError) as exc:
        print(f"cluster-check: {exc}", file=sys.stderr)
        return 2

    report = Report(json_mode=args.json, out=out)
    report.secret(admin_key)
    context = {"namespace": settings.namespace, "gateway": f"{settings.policy_namespace}/{settings.gateway_name}"}
    report.heading(f"MaaS cluster check: namespace {settings.namespace}, Gateway {context['gateway']}")

    cluster: Cluster | None = None
    needs_cluster = not args.no_prereqs or (not args.no_e2e and not (args.admin_url and args.gateway_url))
    if needs_cluster:
        try:
            cluster = Cluster(_api_client(args.kubeconfig, args.context))
        except BackendUnavailable as exc:
            report.add(PREREQS, "kubernetes API", "FAIL", exc.message,
                       "set KUBECONFIG or pass --kubeconfig/--context (or run in a Pod with a ServiceAccount)")

    if not args.no_prereqs and cluster is not None:
        Checks(cluster, settings, report).run()

    if not args.no_e2e:
        assert admin_key is not None
        admin_url = _url(report, cluster, settings, "admin URL", args.admin_url, derive_admin_url, "--admin-url")
        gateway_url = _url(report, cluster, settings, "gateway URL", args.gateway_url, derive_gateway_url,
                           "--gateway-url")
        if admin_url is not None and gateway_url is not None:
            context.update(admin_url=admin_url, gateway_url=gateway_url)
            options = Options(
                admin_url=admin_url, gateway_url=gateway_url, admin_key=admin_key, verify=verify,
                model=args.model, auth_wait=args.auth_wait, revoke_wait=args.revoke_wait,
                limit_tries=args.limit_tries, interval=args.interval, timeout=args.timeout,
            )
            EndToEnd(options, report).run()
    if cluster is not None:
        cluster.client.close()
    return report.finish(context)


if __name__ == "__main__":
    sys.exit(main())
