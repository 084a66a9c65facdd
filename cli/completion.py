"""`maas completion bash|zsh|fish`: the shell's completion script, to source or install."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(shell: Annotated[Shell, typer.Argument(metavar="SHELL", help="bash, zsh or fish.")]) -> None:
    """Print the completion script for a shell: commands, options and their values complete on Tab.

    Examples:
      source <(maas completion bash)                                   # this bash session
      maas completion bash > ~/.local/share/bash-completion/completions/maas
      maas completion zsh > "${fpath[1]}/_maas"
      maas completion fish > ~/.config/fish/completions/maas.fish
    """
    from typer.completion import get_completion_script

    print(get_completion_script(prog_name="maas", complete_var="_MAAS_COMPLETE", shell=shell.value))
