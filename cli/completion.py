"""`maas completion bash|zsh|fish`: the shell's completion script, to source or install."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from typer._completion_classes import completion_init

# Typer registers its shells (what answers each Tab, under _MAAS_COMPLETE) only for an app that
# has its own --install-completion and --show-completion; without them every Tab answers "Shell
# bash not supported". maas prints its scripts here, so it registers the shells here too.
completion_init()


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


_ZSH_REGISTER = "compdef _maas_completion maas"
# Installed as _maas in $fpath, the file is autoloaded as _maas's body on the first Tab: typer's
# script only registered _maas_completion then, so the first Tab of every new zsh offered nothing.
# Registering it still matters: later Tabs must call _maas_completion, not that body again.
_ZSH_REGISTER_AND_COMPLETE = """\
compdef _maas_completion maas
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _maas_completion "$@"
fi"""


# fish asks a completion's condition, then its arguments: typer's script ran maas for each, so every
# Tab waited for two of them. Here the condition's run keeps its answer for the arguments. When
# maas offers nothing (the CSV file of `maas key import`), the condition fails and fish completes files.
_FISH = """\
function __maas_complete
    set -g __maas_completions (env _MAAS_COMPLETE=complete_fish _TYPER_COMPLETE_FISH_ACTION=get-args \\
        _TYPER_COMPLETE_ARGS=(commandline -cp) maas)
    test -n "$__maas_completions"  # maas answers nothing as one empty line
end
complete --command maas --no-files --condition __maas_complete --arguments '(printf "%s\\n" $__maas_completions)'"""


def script(shell: Shell) -> str:
    from typer.completion import get_completion_script

    if shell is Shell.fish:
        return _FISH
    text = get_completion_script(prog_name="maas", complete_var="_MAAS_COMPLETE", shell=shell.value)
    if shell is Shell.zsh:
        if text.count(_ZSH_REGISTER) != 1:
            # A typer upgrade changed its template: fail here rather than print a script that
            # completes nothing on the first Tab again.
            raise RuntimeError(f"typer's zsh completion script no longer has {_ZSH_REGISTER!r}")
        text = text.replace(_ZSH_REGISTER, _ZSH_REGISTER_AND_COMPLETE)
    return text


def completion(shell: Annotated[Shell, typer.Argument(metavar="SHELL", help="bash, zsh or fish.")]) -> None:
    """Print the completion script for a shell: commands, options and their values complete on Tab.

    Examples:
      source <(maas completion bash)    # this bash session
      maas completion bash > ~/.local/share/bash-completion/completions/maas
      maas completion zsh > "${fpath[1]}/_maas"
      maas completion fish > ~/.config/fish/completions/maas.fish
    """
    print(script(shell))
