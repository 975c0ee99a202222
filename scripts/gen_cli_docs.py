"""Write docs/cli.md from the argparse parsers of dbgpu/cli.py: every command, every option,
its argument, default and help text.

    python scripts/gen_cli_docs.py           # (re)write docs/cli.md
    python scripts/gen_cli_docs.py --check   # exit 1 if docs/cli.md is not what this writes

The output depends only on the parsers (no terminal width, no version string, no date), so
running it twice gives the same file and tests/test_docs.py can tell a stale one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"
#: the usage lines are wrapped at this width (by this script, not by argparse or the terminal)
WIDTH = 96
COMMAND = "python scripts/gen_cli_docs.py"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, on one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _one(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest.upper())
    arg = _argument(action)
    return action.option_strings[0] + (f" {arg}" if arg else "")


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    """The usage line, built here rather than by argparse (whose layout differs between
    Python versions): positionals, then options in parser order, optional ones in [ ],
    mutually exclusive ones joined by |; wrapped at WIDTH between items."""
    group_of = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    items, done = [], set()
    for a in [a for a in actions if not a.option_strings] + [a for a in actions if a.option_strings]:
        if id(a) in done:
            continue
        g = group_of.get(id(a))
        if g is not None:
            done |= {id(x) for x in g._group_actions}
            inner = " | ".join(_one(x) for x in g._group_actions)
            items.append(f"({inner})" if g.required else f"[{inner}]")
        else:
            items.append(_one(a) if a.required or not a.option_strings else f"[{_one(a)}]")
    head = f"usage: {prog}"
    lines, cur = [], head
    for item in items:
        if len(cur) + 1 + len(item) > WIDTH and cur.strip() != head:
            lines.append(cur)
            cur = " " * len(head)
        cur += " " + item
    return "\n".join(lines + [cur])


def _argument(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and action.metavar is None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    if action.metavar is not None:
        return str(action.metavar)
    return action.dest.upper()


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
        return ""
    return f"`{action.default}`"


def _exclusive(parser: argparse.ArgumentParser) -> dict[int, str]:
    """For each option in a mutually exclusive group: a note naming the group."""
    notes = {}
    for group in parser._mutually_exclusive_groups:
        names = ", ".join(f"`{a.option_strings[0]}`" for a in group._group_actions)
        note = f"one of {names}" + (" is required" if group.required else "")
        for a in group._group_actions:
            notes[id(a)] = note
    return notes


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    notes = _exclusive(parser)
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = {"positional arguments": "arguments", "options": "options",
                 "optional arguments": "options"}.get(group.title, group.title)
        lines += ["", f"{title}:", "", "| option | argument | default | what |", "|---|---|---|---|"]
        for a in actions:
            name = ", ".join(f"`{o}`" for o in a.option_strings) or f"`{_one(a)}`"
            arg = _argument(a) if a.option_strings else ""
            text = a.help or ""
            if id(a) in notes:
                text = f"{text} ({notes[id(a)]})"
            lines.append(f"| {name} | {_cell(f'`{arg}`') if arg else ''} | {_cell(_default(a))} | {_cell(text)} |")
    return lines


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order `dbgpu --help` lists them."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in action.choices.items()]


def render() -> str:
    """The text of docs/cli.md."""
    sys.path.insert(0, str(ROOT))
    from dbgpu.cli import build_parser

    parser = build_parser()
    cmds = subcommands(parser)
    lines = [f"<!-- generated by {COMMAND} from dbgpu/cli.py: do not edit by hand -->", "",
             "# Command line", "",
             parser.description or "", "",
             f"Every command and option, generated from the parsers in `dbgpu/cli.py` (run `{COMMAND}` "
             "after changing them; `tests/test_docs.py` fails while this page is stale). "
             "`dbgpu --version` prints the version; `dbgpu COMMAND --help` prints the same text as below.",
             "", "| command | what it does |", "|---|---|"]
    lines += [f"| [`dbgpu {name}`](#dbgpu-{name}) | {_cell(h)} |" for name, h, _ in cmds]
    lines += ["", "Errors on bad input: one line on stderr naming the problem, exit status 2, nothing "
              "written half-way. Ctrl-C exits 130, SIGTERM 143, each with one line."]
    for name, h, p in cmds:
        summary = (h[:1].upper() + h[1:] + ("" if h.endswith(".") else ".")) if h else ""
        lines += ["", f"## dbgpu {name}", "", summary]
        if p.description:
            lines += ["", p.description]
        lines += ["", "```text", _usage(f"dbgpu {name}", p), "```"]
        lines += _options_table(p)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write docs/cli.md from dbgpu/cli.py's parsers.")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale; write nothing")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if OUT.is_file() and OUT.read_text(encoding="utf-8") == text:
        print(f"{OUT.relative_to(ROOT)} is up to date")
        return 0
    tmp = OUT.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
