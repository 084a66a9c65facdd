"""`python -m local serve`: the one-machine runtime's command line."""

from __future__ import annotations

import argparse
import sys

from pydantic.fields import FieldInfo

from shared.settings import ConfigurationError, Settings, load_settings


def _shown_default(field: FieldInfo) -> str:
    """' (default: 8443)', as the README's table gives it; nothing for a setting unset by default."""
    value = field.get_default(call_default_factory=True)
    if value is None or value == () or value == "":
        return ""
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    return f" (default: {value})"


def _parser() -> argparse.ArgumentParser:
    env_help = "\n".join(
        f"  {field.validation_alias if isinstance(field.validation_alias, str) else field.validation_alias.choices[0]:<24}"
        f" {field.description or ''}{_shown_default(field)}"
        for field in Settings.model_fields.values()
    )
    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="MaaS key manager on one machine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"configuration (environment variables):\n{env_help}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="serve the admin API (TLS), the gateway and the model simulator in the foreground",
        description="Serve every function, the gateway and the model simulator until Ctrl-C or SIGTERM.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "serve":
        from local.serve import serve

        return serve(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
