"""`maas`: the command tree, its root options, and how every failure becomes one line and an
exit code (cli/exitcodes.py)."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.core import ParameterSource  # typer vendors click (see MaasGroup.main)
from typer.core import TyperGroup

from cli import audit, auth, cluster, completion, keys, limits, members, models, policy, profiles, serve, teams, usage
from cli.config import CredentialStore, profile_name
from cli.exitcodes import EXIT_CODES_HELP, CliError, ExitCode
from cli.session import Session

VERSION = "0.1.0"

_EXIT_CODES = "\n".join(f"  {int(code)}  {meaning}" for code, meaning in EXIT_CODES_HELP)

HELP = """Manage teams, API keys, members and usage of the MaaS key manager, over its admin API.

Sign in once with `maas login`; every other command uses what it saved (per server, or under a
profile name for --profile, in ~/.config/maas/credentials.json, 0600). Tables are for people; --json and -o yaml print the
API's answer as is, for scripts. Every command has --help, with examples.
"""

EPILOG = f"""Examples:
  maas serve                                  # terminal 1, in the project
  maas login --admin-key < .maas/admin-key    # terminal 2, same folder
  maas team create test-team --token-limit 100000 --time-window 1h
  maas key create test-team test-user --email test-user@test.com
  maas usage team test-team --by model
  maas --profile prod key list --team team-a  # as maas login --profile prod

Environment:
  MAAS_URL         the admin API (default: https://127.0.0.1:8443)
  MAAS_PROFILE     a saved sign-in and its server, as --profile
  MAAS_CA_FILE     a private CA's certificate, as --ca-file
  ADMIN_KEY        the admin key, for `maas login --admin-key`
  MAAS_DATA_DIR    make run's data: maas trusts its tls/cert.pem for 127.0.0.1
  XDG_CONFIG_HOME  where maas/credentials.json is kept (default: ~/.config)

Exit codes:
{_EXIT_CODES}
"""


def _indented(paragraph: str) -> bool:
    return any(line.startswith(" ") for line in paragraph.splitlines())


def reflow(text: str, *, docstring: bool = True) -> str:
    """Prose paragraphs as one line each, for the terminal to wrap at its width; a paragraph
    with indented lines (examples, tables) as it is written. A docstring is dedented first; an
    epilog is written flush already, and dedenting one whose lines after the first are all
    examples would flatten them."""
    paragraphs = [
        paragraph if _indented(paragraph) else " ".join(paragraph.split())
        for paragraph in (inspect.cleandoc(text) if docstring else text.strip("\n")).split("\n\n")
    ]
    # Typer dedents what follows a help's first paragraph (and an epilog) with inspect.cleandoc,
    # which measures the indent from the second line on: a block that opens the text, "Examples:"
    # then indented lines only, would lose its indent. A blank line before it makes its header a
    # second line (cleandoc then drops the blank line).
    first = 1 if docstring else 0
    if len(paragraphs) > first and _indented(paragraphs[first]) and not paragraphs[first].startswith(" "):
        paragraphs[first] = "\n" + paragraphs[first]
    return "\n\n".join(paragraphs)


class _HelpNames:
    """What click's get_help_option reads of a context (root's context_settings; children inherit them)."""

    help_option_names = ["-h", "--help"]


def _no_type(ctx: Any) -> None:
    return None


def _tidy(command: Any) -> None:
    """Help texts reflowed (`reflow`); no `<bool>` type shown beside a flag (--help too, which
    click makes on first use), which takes no value; no `<str>` beside an argument, whose
    name (TEAM_ID, KEY) says more, nor beside an option, which shows its name as its value's."""
    for attribute in ("help", "epilog"):
        text = getattr(command, attribute, None)
        if text:
            setattr(command, attribute, reflow(text, docstring=attribute == "help"))
    help_option = command.get_help_option(_HelpNames()) if hasattr(command, "get_help_option") else None
    for param in [*getattr(command, "params", []), *([help_option] if help_option is not None else [])]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        kind, bare = getattr(param, "param_type_name", None), getattr(param, "bare_type", lambda: "")()
        if kind == "argument" and bare == "str":
            param.display_type_rich = _no_type
        elif kind == "option" and not getattr(param, "is_flag", False) and param.metavar is None \
                and bare in ("str", "list[str]"):
            # --team TEAM, as kubectl and gh show a value, rather than --team <str>.
            param.metavar = max(param.opts, key=len).lstrip("-").upper().replace("-", "_")
    for child in getattr(command, "commands", {}).values():
        _tidy(child)


def _report(error: CliError) -> int:
    print(f"maas: {error.line()}", file=sys.stderr)
    return int(error.code)


class MaasGroup(TyperGroup):
    """Typer's group, with its errors printed as one line and mapped to our exit codes, under
    the console script and typer's CliRunner alike."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        # Typer vendors click since 0.2x: its usage errors live there (typer pinned, requirements.txt).
        from typer._click.exceptions import NoArgsIsHelpError, UsageError

        _tidy(self)
        try:
            result = super().main(args, prog_name or "maas", complete_var, standalone_mode=False,
                                  windows_expand_args=windows_expand_args, **extra)
            code = result if isinstance(result, int) else 0
        except CliError as error:
            code = _report(error)
        except NoArgsIsHelpError as error:
            # `maas` or `maas team` alone: typer's rich help has printed itself by now; plain help
            # (no rich) is the message.
            if error.format_message().strip():
                print(error.format_message(), file=sys.stderr)
            code = ExitCode.USAGE
        except UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "maas"
            code = _report(CliError(error.format_message(), ExitCode.USAGE, hint=f"see `{where} --help`"))
        except typer.TyperException as error:
            code = _report(CliError(error.format_message(), ExitCode.API_ERROR))
        except (typer.Abort, KeyboardInterrupt):
            print("maas: interrupted", file=sys.stderr)
            code = 130
        except BrokenPipeError:
            # `maas key list --all | head`: the reader left, nothing to report; stdout goes to
            # /dev/null so that the interpreter's last flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="maas",
    cls=MaasGroup,
    help=HELP,
    epilog=EPILOG,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,  # `maas completion SHELL` prints the scripts; typer's own options would be a second way
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        print(f"maas {VERSION}")
        raise typer.Exit()


def _profile_names(incomplete: str) -> list[str]:
    """Tab after --profile: the profiles kept, none if the file cannot be read (completion never fails)."""
    try:
        names = CredentialStore.load().profiles
    except CliError:
        return []
    return [name for name in sorted(names) if name.startswith(incomplete)]


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(
        "--url", envvar="MAAS_URL", show_envvar=True, metavar="URL",
        help="The admin API. Default: the last server you signed in to, else https://127.0.0.1:8443.",
    )] = None,
    ca: Annotated[Path | None, typer.Option(
        "--ca-file", "--ca", envvar="MAAS_CA_FILE", show_envvar=True, metavar="FILE", exists=True, dir_okay=False,
        help="A CA certificate (PEM) for a private CA: the one trusted for the admin API, and trusted "
             "for the identity provider besides the system's. Kept at login. For 127.0.0.1, maas "
             "trusts $MAAS_DATA_DIR/tls/cert.pem (make run's) by itself.",
    )] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", envvar="MAAS_PROFILE", show_envvar=True, metavar="NAME", autocompletion=_profile_names,
        help="Act as the sign-in saved under this name by `maas login --profile NAME`, on its server.",
    )] = None,
    insecure: Annotated[bool, typer.Option("--insecure", "-k", help="Do not check the server's TLS certificate.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    typed = ctx.get_parameter_source("url") is ParameterSource.COMMANDLINE
    ctx.obj = Session(url_flag=url, url_typed=typed, profile=profile_name(profile) if profile else None,
                      ca=ca, insecure=insecure)


app.command("serve", rich_help_panel="This machine")(serve.serve)
auth.register(app)
app.add_typer(profiles.app, name="profile", rich_help_panel="Sign in")
app.add_typer(teams.app, name="team", rich_help_panel="Admin")
app.add_typer(members.app, name="member", rich_help_panel="Admin")
app.add_typer(keys.app, name="key", rich_help_panel="Admin")
app.add_typer(usage.app, name="usage", rich_help_panel="Admin")
app.add_typer(limits.app, name="limits", rich_help_panel="Admin")
app.command("models", rich_help_panel="Admin")(models.list_models)
app.command("audit", rich_help_panel="Admin")(audit.audit)
app.add_typer(policy.app, name="policy", rich_help_panel="Cluster")
app.command("cluster-check", rich_help_panel="Cluster", context_settings=cluster.CONTEXT,
            add_help_option=False)(cluster.cluster_check)
app.command("completion", rich_help_panel="This machine")(completion.completion)


def main() -> None:
    app()
