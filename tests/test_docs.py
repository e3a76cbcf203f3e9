"""The README and docs/ show only commands the CLI accepts, and document every flag it has.

Every ``karst-deploy …`` (or ``python -m karst_deploy …``) command in a shell code block of
README.md or docs/*.md, and every inline ``karst-deploy …`` synopsis, is checked against the
click command that typer builds from `karst_deploy.cli.app`, in-process: the subcommand must
exist and accept each flag used. To see every mismatch at once (file:line, command, flag):

    python -m tests.test_docs
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from karst_deploy.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
README_MAX_LINES = 200


@dataclass(frozen=True)
class Shown:
    """One command as the docs show it: where, and its arguments after the program name."""

    file: Path
    line: int
    args: tuple[str, ...]

    def where(self) -> str:
        name = self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file.name
        return f"{name}:{self.line}"


def code_blocks(text: str) -> Iterator[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each fenced block; indented fences included."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if match is None:
            i += 1
            continue
        start, body = i + 2, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        yield match.group(1), start, body
        i += 1


def logical_lines(body: list[str], first: int) -> Iterator[tuple[int, str]]:
    """Shell lines with their backslash continuations joined, numbered by their first line."""
    pending, start = "", first
    for number, line in enumerate(body, first):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def shell_tokens(line: str) -> list[str]:
    """Words of a shell line as the shell splits them; `;`, `&&`, `|` apart; comments gone."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def karst_commands(tokens: list[str]) -> Iterator[list[str]]:
    """The arguments of each karst-deploy invocation in a tokenised shell line."""
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        for i, word in enumerate(segment):
            if word == "karst-deploy" or word.endswith("/karst-deploy"):
                yield segment[i + 1 :]
                break
            if word == "-m" and segment[i + 1 : i + 2] == ["karst_deploy"]:
                yield segment[i + 2 :]
                break
        segment = []


def shown_commands(path: Path) -> Iterator[Shown]:
    """Every karst-deploy command in `path`: shell code blocks and inline synopses."""
    text = path.read_text()
    for language, first, body in code_blocks(text):
        if language not in SHELL_BLOCKS:
            continue
        for number, line in logical_lines(body, first):
            try:
                tokens = shell_tokens(line)
            except ValueError as error:
                raise AssertionError(
                    f"{path.name}:{number}: cannot split {line!r}: {error}"
                ) from None
            for args in karst_commands(tokens):
                yield Shown(path, number, tuple(args))
    # Inline synopses such as `karst-deploy merge --adapter DIR [--img-size N]`: flags only.
    for number, line in enumerate(text.splitlines(), 1):
        for span in re.findall(r"`(karst-deploy [^`]+)`", line):
            words = span.split()[1:]
            name = [] if not words or words[0].startswith("-") else [words.pop(0)]
            flags = re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", " ".join(words))
            yield Shown(path, number, (*name, *flags))


def cli_root():
    """The click group typer builds from the app (typer vendors click: no isinstance checks)."""
    return typer.main.get_command(app)


def is_option(param) -> bool:
    return param.param_type_name == "option"


def option_names(command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if is_option(param):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def problems(shown: Shown, root) -> list[str]:
    """What the CLI would refuse in `shown`: an unknown subcommand or flag."""
    found = []
    args = list(shown.args)
    root_options = option_names(root)
    while args and args[0].startswith("-"):  # global options before the subcommand
        flag = args.pop(0).split("=", 1)[0]
        if flag not in root_options:
            found.append(f"unknown global option {flag}")
    if not args or re.fullmatch(r"[A-Z_.]+|\.\.\.|…", args[0]):  # `karst-deploy COMMAND ...`
        return found
    name, rest = args[0], args[1:]
    command = root.commands.get(name)
    if command is None:
        return [*found, f"unknown command {name!r}"]
    accepted = option_names(command)
    for word in rest:
        if word == "--":
            break
        if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", word):
            flag = word.split("=", 1)[0]
            if flag not in accepted:
                found.append(f"`karst-deploy {name}` has no option {flag}")
    return found


def doc_problems(path: Path) -> list[str]:
    root = cli_root()
    return [
        f"{shown.where()}: {problem}"
        for shown in shown_commands(path)
        for problem in problems(shown, root)
    ]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shown_command_parses(path):
    found = doc_problems(path)
    assert not found, "\n".join(found)


def test_the_checker_catches_an_unknown_flag_and_command(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "karst-deploy export --adapter runs/karst \\\n"
        "    --out m.onnx --frobnicate 3   # comment --ignored\n"
        "karst-deploy fly --out x && python -m karst_deploy --debug bench --onnx a.onnx\n"
        "```\n"
        "Run `karst-deploy merge --adapter DIR [--nonsense N]`.\n"
    )
    assert doc_problems(page) == [
        "page.md:2: `karst-deploy export` has no option --frobnicate",
        "page.md:4: unknown command 'fly'",
        "page.md:6: `karst-deploy merge` has no option --nonsense",
    ]


def test_the_docs_show_commands_at_all():
    """The extraction finds the README's front-door commands (guards against a silent 0)."""
    shown = [s.args[0] for s in shown_commands(ROOT / "README.md") if s.args]
    for name in ("demo", "train", "export", "verify-parity", "bench", "build-engine"):
        assert name in shown, name


def test_cli_page_documents_every_command_and_flag():
    root = cli_root()
    page = (ROOT / "docs" / "cli.md").read_text()
    missing = [f"{opt} (global)" for opt in option_names(root) - {"--help"} if opt not in page]
    for name, command in root.commands.items():
        if command.hidden:
            continue
        section = re.search(
            rf"^## `karst-deploy {re.escape(name)}`.*?(?=^## |\Z)", page, re.M | re.S
        )
        if section is None:
            missing.append(f"section ## `karst-deploy {name}`")
            continue
        for param in command.params:
            if is_option(param) and not param.hidden:
                for opt in [*param.opts, *param.secondary_opts]:
                    if not re.search(rf"`{re.escape(opt)}[` =\[]", section.group(0)):
                        missing.append(f"{name} {opt}")
    assert not missing, "docs/cli.md does not document: " + ", ".join(missing)


def test_readme_is_a_front_door_whose_setup_commands_are_ci():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    _, _, first_block = next(code_blocks(readme))
    assert readme.lstrip().startswith("# karst-deploy\n\n```bash")
    install, test = first_block
    assert install.endswith("pip install -e . && karst-deploy demo")
    ci = (ROOT / ".ci" / "run").read_text()
    # The README's second command is CI's: the same venv, the same extras, the same pytest.
    venv = "python3 -m venv .venv && . .venv/bin/activate"
    assert install.startswith(venv) and test.startswith(venv) and venv in ci
    assert 'pip install -e ".[test]"' in test and 'pip install -q -e ".[test]"' in ci
    assert test.endswith("&& pytest -q") and re.search(r"^pytest -q$", ci, re.M)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve(path):
    text = path.read_text()
    broken = []
    for number, line in enumerate(text.splitlines(), 1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "\n".join(broken)


if __name__ == "__main__":
    for doc in DOCS:
        print("\n".join(doc_problems(doc)) or f"{doc.relative_to(ROOT)}: ok")
