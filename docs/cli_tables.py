"""Print docs/cli.md's per-command sections from the CLI itself: ``python docs/cli_tables.py``.

Paste the output over the ``## `karst-deploy NAME` `` sections of docs/cli.md after a command
or option changes (tests/test_docs.py fails until every option is listed there). Help texts
are printed raw, so bracketed defaults such as ``[lr/10]`` stay visible.
"""

import pathlib

import typer

from karst_deploy.cli import app

METAVARS = {pathlib.Path: "PATH", str: "TEXT", int: "N", float: "X"}


def main() -> None:
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        if command.hidden:
            continue
        print(f"## `karst-deploy {name}`\n")
        for paragraph in (command.help or "").strip().split("\n\n"):
            print(paragraph.replace("\n", " ") + "\n")
        print("| option | meaning | default |\n| --- | --- | --- |")
        for param in command.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            kind = param.type_descriptor.annotation
            kind = kind if isinstance(kind, type) else getattr(kind, "__args__", (kind,))[0]
            names = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
            metavar = "" if param.is_flag else " " + METAVARS.get(kind, str(kind))
            meaning = (param.help or "").replace("|", "\\|").replace("\n", " ")
            meaning += " Required." if param.required else ""
            if param.is_flag:
                on, off = param.opts[0], (param.secondary_opts or [""])[0]
                default = (on if param.default else off) if param.secondary_opts else ""
            else:
                default = "" if param.default is None else str(param.default)
            print(f"| {names}{metavar} | {meaning} | {f'`{default}`' if default else ''} |")
        print()


if __name__ == "__main__":
    main()
