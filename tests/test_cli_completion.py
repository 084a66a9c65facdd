"""Tab completion in the real bash, zsh and fish: each loads what `maas completion SHELL` prints
(sourced, and where zsh and fish install it) and is asked for completions the way it asks on Tab.
zsh runs interactive on a pseudo-terminal, since its completion functions only work inside its
line editor. tools/ensure_shells.sh installs zsh and fish (make test runs it)."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.main import get_command

from cli.completion import Shell, script
from cli.config import Credential, CredentialStore
from cli.main import app

MAAS = Path(sys.executable).parent / "maas"
SHELLS = ("bash", "zsh", "fish")

COMMAND = "maas ke"
GROUP = "maas key "
OPTION = "maas key list --te"
PROFILE = "maas --profile o"
NONSENSE = "maas zq"
FILE = "maas key import no"  # its CSV file: maas offers nothing, so the shell offers files
LINES = (COMMAND, GROUP, OPTION, PROFILE, NONSENSE)
PROFILES = ("ops", "ops-2", "staging")

Answers = dict[str, list[str]]

# A line per query, then what the shell offered for it, a line each.
_BASH = r"""
source <(maas completion bash) || exit 1
# The function bash itself would call on Tab, as the script registered it.
spec=$(complete -p maas) || exit 1
function=${spec##*-F }; function=${function%% *}
for line in "$@"; do
    read -ra COMP_WORDS <<<"$line"
    [[ $line == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    COMP_LINE=$line COMP_POINT=${#line} COMPREPLY=()
    "$function" maas "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    printf '@@ %s\n' "$line"
    printf '%s\n' "${COMPREPLY[@]}"
done
"""

_FISH_SOURCED = """
source (maas completion fish | psub); or exit 1
for line in $argv; echo "@@ $line"; complete -C $line; end
"""
# Installed, fish loads completions/maas.fish by itself on the first completion of maas.
_FISH_INSTALLED = 'for line in $argv; echo "@@ $line"; complete -C $line; end'

_ZSH_SOURCED = """
autoload -Uz compinit && compinit -u -D
source <(maas completion zsh)
"""
# Installed as the docstring of `maas completion` says, "${fpath[1]}/_maas": compinit finds it there.
_ZSH_INSTALLED = """
fpath=($INSTALL $fpath)
autoload -Uz compinit && compinit -u -D
"""
# Every match a completion function offers goes through compadd: a copy of each Tab's goes to
# $CAPTURE/N.hits, and N.done says that Tab N has finished.
_ZSH_CAPTURE = r"""
bindkey -e
integer capture_n=0
compadd() {
    # -O, -A and -D only collect matches for the caller to sort out; they add nothing.
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
    local -a hits
    builtin compadd -A hits "$@"
    (( $#hits )) && print -rl -- $hits >> $CAPTURE/$capture_n.hits
    builtin compadd "$@"
}
capture-complete() { (( capture_n++ )); _main_complete; : > $CAPTURE/$capture_n.done }
zle -C capture-complete complete-word capture-complete
bindkey '^I' capture-complete
: > $CAPTURE/ready
"""


def _sections(output: str) -> Answers:
    answers: Answers = {}
    current: list[str] = []
    for line in output.splitlines():
        if line.startswith("@@ "):
            current = answers.setdefault(line[3:], [])
        elif line.strip():
            current.append(line.split("\t")[0])  # fish adds a tab and the description
    return answers


def _run(argv: list[str], lines: tuple[str, ...], env: dict[str, str], cwd: Path) -> Answers:
    ran = subprocess.run([*argv, *lines], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)
    assert ran.returncode == 0, f"{argv[0]} exited {ran.returncode}: {ran.stderr}"
    answers = _sections(ran.stdout)
    assert set(answers) == set(lines), f"{argv[0]} answered {answers}; stderr: {ran.stderr}"
    return answers


def _zsh(setup: str, lines: tuple[str, ...], env: dict[str, str], cwd: Path, scratch: Path) -> Answers:
    """Type each line and Tab into an interactive zsh; what its completion offered, per line."""
    capture = scratch / "capture"
    capture.mkdir(parents=True)
    (scratch / "install").mkdir()
    (scratch / "install" / "_maas").write_text(script(Shell.zsh) + "\n")
    (scratch / "setup.zsh").write_text(setup + _ZSH_CAPTURE)
    master, terminal = pty.openpty()
    # A screen big enough that zsh lists matches without asking first.
    termios.tcsetwinsize(terminal, (50, 200))
    shell = subprocess.Popen(["zsh", "-f", "-i"], stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd,
                             env={**env, "CAPTURE": str(capture), "INSTALL": str(scratch / "install")},
                             start_new_session=True)
    os.close(terminal)
    screen = bytearray()

    def wait_for(path: Path) -> None:
        deadline = time.monotonic() + 30
        while not path.exists():
            # zsh blocks once the terminal's buffer is full: keep reading what it shows.
            if select.select([master], [], [], 0.05)[0]:
                try:
                    screen.extend(os.read(master, 65536))
                except OSError:
                    pass
            if shell.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"zsh did not get to {path.name}; its screen:\n"
                                     + screen.decode(errors="replace")[-3000:])

    try:
        os.write(master, f"source {scratch / 'setup.zsh'}\n".encode())
        wait_for(capture / "ready")
        answers: Answers = {}
        for number, line in enumerate(lines, 1):
            os.write(master, line.encode() + b"\t")
            wait_for(capture / f"{number}.done")
            hits = capture / f"{number}.hits"
            answers[line] = hits.read_text().split() if hits.exists() else []
            os.write(master, b"\x15")  # Ctrl-U: an empty line for the next
        return answers
    finally:
        shell.kill()
        shell.wait(timeout=10)
        os.close(master)


@pytest.fixture(scope="module")
def offered(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Answers]:
    """What each shell offered, sourced and installed: the shells run side by side (a Tab runs
    `maas`, most of a second each), each as the user's would, in a home of its own."""
    home = tmp_path_factory.mktemp("home")
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "notes.csv").touch()  # what file completion finds there
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("MAAS_", "_MAAS", "COMP_", "_TYPER"))}
    environment.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
                       XDG_CACHE_HOME=str(home / "cache"), PATH=f"{MAAS.parent}{os.pathsep}{os.environ['PATH']}",
                       TERM="dumb")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", environment["XDG_CONFIG_HOME"])
        store = CredentialStore()
        for name in PROFILES:
            store.put(Credential(url="https://keys.example.com", method="admin-key", secret="not-a-key"), profile=name)
    # Fish's own config lives there too: the sourced script must not be helped by an installed one.
    installed_fish = {**environment, "XDG_CONFIG_HOME": str(home / "fish-installed")}
    (home / "fish-installed" / "fish" / "completions").mkdir(parents=True)
    (home / "fish-installed" / "fish" / "completions" / "maas.fish").write_text(script(Shell.fish) + "\n")
    # The first Tab of a new shell loads the installed script; the next finds it loaded.
    first_and_next = (COMMAND, GROUP)
    runs: dict[tuple[str, str], Callable[[], Answers]] = {
        # Bash completes files itself when the function offers nothing (complete -o default).
        ("bash", "sourced"): lambda: _run(["bash", "-c", _BASH, "bash"], LINES, environment, cwd),
        ("fish", "sourced"): lambda: _run(["fish", "-c", _FISH_SOURCED], (*LINES, FILE), environment, cwd),
        ("fish", "installed"): lambda: _run(["fish", "-c", _FISH_INSTALLED], first_and_next, installed_fish, cwd),
        ("zsh", "sourced"): lambda: _zsh(_ZSH_SOURCED, (*LINES, FILE), environment, cwd, home / "zsh-sourced"),
        ("zsh", "installed"): lambda: _zsh(_ZSH_INSTALLED, first_and_next, environment, cwd, home / "zsh-installed"),
    }
    missing = {shell for shell in SHELLS if shutil.which(shell) is None}
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {run: pool.submit(function) for run, function in runs.items() if run[0] not in missing}

    def answers(shell: str, how: str) -> Answers:
        if shell in missing:
            pytest.fail(f"{shell} is not installed: run tools/ensure_shells.sh (make test runs it)")
        return futures[shell, how].result()

    return answers


@pytest.mark.parametrize("shell", SHELLS)
def test_a_command_completes_from_its_first_letters(offered: Callable[[str, str], Answers], shell: str) -> None:
    assert offered(shell, "sourced")[COMMAND] == ["key"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_group_offers_its_commands(offered: Callable[[str, str], Answers], shell: str) -> None:
    commands = set(get_command(app).commands["key"].commands)  # type: ignore[attr-defined]
    assert {"create", "list", "revoke", "rotate"} <= commands
    assert sorted(offered(shell, "sourced")[GROUP]) == sorted(commands)


@pytest.mark.parametrize("shell", SHELLS)
def test_an_option_completes_from_its_first_letters(offered: Callable[[str, str], Answers], shell: str) -> None:
    assert offered(shell, "sourced")[OPTION] == ["--team"]


@pytest.mark.parametrize("shell", SHELLS)
def test_profile_offers_the_saved_profiles_that_match(offered: Callable[[str, str], Answers], shell: str) -> None:
    assert sorted(offered(shell, "sourced")[PROFILE]) == ["ops", "ops-2"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_prefix_of_nothing_completes_nothing(offered: Callable[[str, str], Answers], shell: str) -> None:
    assert offered(shell, "sourced")[NONSENSE] == []


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_where_maas_offers_nothing_the_shell_offers_files(offered: Callable[[str, str], Answers], shell: str) -> None:
    assert offered(shell, "sourced")[FILE] == ["notes.csv"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_the_installed_script_completes_from_the_first_tab(offered: Callable[[str, str], Answers], shell: str) -> None:
    installed = offered(shell, "installed")
    assert installed[COMMAND] == ["key"], "the first Tab"
    assert "rotate" in installed[GROUP], "a later Tab"


# What a Tab needs: the command tree. The HTTP client, the tables, YAML, the progress bar and the
# browser sign-in's server are imported by the commands that use them, so a Tab (a whole maas
# start, every time) does not pay for them: they were about half of its start.
_TAB_CHILD = """
import atexit, json, os, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.__stderr__))
from cli.main import main
main()
"""


def test_a_tab_imports_no_http_client_tables_or_yaml() -> None:
    env = {**os.environ, "_MAAS_COMPLETE": "complete_bash", "COMP_WORDS": "maas key ", "COMP_CWORD": "2"}
    done = subprocess.run([sys.executable, "-c", _TAB_CHILD], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    modules = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert "create" in done.stdout and "revoke" in done.stdout, done.stdout  # it did complete
    assert not modules & {"httpx", "yaml", "rich.table", "rich.progress", "http.server"}, (
        sorted(modules & {"httpx", "yaml", "rich.table", "rich.progress", "http.server"}))
