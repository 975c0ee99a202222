"""The documentation against the code: docs/cli.md is what scripts/gen_cli_docs.py writes
from the parsers now, and every shell command in README.md and docs/*.md that runs
`dbgpu` (directly, as `python -m dbgpu`, or under torchrun / accelerate launch) parses
against the CLI, so a renamed or removed option or command fails here."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from dbgpu.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([A-Za-z]*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL = {"sh", "bash", "shell", "console", "zsh"}
SEPARATORS = {"&&", "||", ";", "|", "&"}


def gen_cli_docs():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- docs/cli.md


def test_cli_md_is_what_the_generator_writes_now():
    gen = gen_cli_docs()
    assert gen.OUT.is_file(), f"docs/cli.md is missing: run `{gen.COMMAND}`"
    assert gen.OUT.read_text(encoding="utf-8") == gen.render(), \
        f"docs/cli.md is stale (the parsers in dbgpu/cli.py changed): run `{gen.COMMAND}`"


def test_cli_md_does_not_depend_on_the_terminal(monkeypatch):
    gen = gen_cli_docs()
    monkeypatch.setenv("COLUMNS", "37")
    narrow = gen.render()
    monkeypatch.setenv("COLUMNS", "250")
    assert gen.render() == narrow


def test_cli_md_names_every_command_and_option():
    """Read from the parsers here, independently of the generator's own walk."""
    import argparse

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 8
    for name, p in sub.choices.items():
        section = text.split(f"\n## dbgpu {name}\n", 1)
        assert len(section) == 2, f"docs/cli.md has no section for `dbgpu {name}`"
        body = section[1].split("\n## dbgpu ", 1)[0]
        for a in p._actions:
            for opt in a.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}`" in body, f"docs/cli.md: `dbgpu {name}` lacks {opt}"
            if a.help and not isinstance(a, argparse._HelpAction):
                assert " ".join(a.help.split())[:40].replace("|", "\\|") in body


# --------------------------------------------------------------------------- shell blocks


def shell_lines(text: str):
    """(line number, command line) of every command in the shell code blocks of a Markdown
    text: continuation lines joined; in a block with `$ ` prompts only the prompted lines."""
    for m in FENCE.finditer(text):
        if m.group(1).lower() not in SHELL:
            continue
        start = text.count("\n", 0, m.start(2)) + 1
        raw = m.group(2).splitlines()
        prompted = any(line.startswith("$ ") for line in raw)
        joined, first = "", None
        for k, line in enumerate(raw):
            if first is None:
                if prompted and not line.startswith("$ "):
                    continue
                first, line = start + k, line[2:] if prompted else line
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            yield first, joined + line
            joined, first = "", None


def _segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line (comments dropped, split at && ; | and the like,
    output redirections left out)."""
    tokens = shlex.split(line, comments=True)
    out, cur, skip = [], [], False
    for t in tokens:
        if skip:
            skip = False
            continue
        if t in SEPARATORS:
            out.append(cur)
            cur = []
        elif t in (">", ">>", "2>", "<"):
            skip = True
        elif re.match(r"^(\d?>|>>|<)", t):
            continue
        else:
            cur.append(t)
    return [s for s in out + [cur] if s]


def dbgpu_argv(words: list[str]):
    """("dbgpu", argv) for a command that runs dbgpu, ("make", targets) for make, else None."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):     # VAR=value prefixes
        words = words[1:]
    if not words:
        return None
    head = words[0].rsplit("/", 1)[-1]
    if head == "dbgpu":
        return "dbgpu", words[1:]
    if head == "make":
        return "make", [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    if re.fullmatch(r"python[0-9.]*", head) and words[1:3] == ["-m", "dbgpu"]:
        return "dbgpu", words[3:]
    if head == "torchrun" or (head == "accelerate" and words[1:2] == ["launch"]):
        for k in range(len(words) - 1):
            if words[k] == "-m" and words[k + 1] == "dbgpu":
                return "dbgpu", words[k + 2:]
        raise AssertionError(f"a launcher line that runs no `-m dbgpu`: {shlex.join(words)}")
    if "dbgpu" in words:
        raise AssertionError(f"runs dbgpu in a way this test does not read: {shlex.join(words)}")
    return None


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def check_argv(argv: list[str]) -> str | None:
    """None when the CLI's parser takes argv, else its error. An excerpt with `...` (options
    left out) is checked option by option: every option named must exist for its command."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in (parser, *sub.choices.values()):
        p.allow_abbrev = False                          # the docs spell every option in full
    if "..." in argv:
        if not argv or argv[0] not in sub.choices:
            return f"unknown command {argv[:1]}"
        known = sub.choices[argv[0]]._option_string_actions
        bad = [t for t in argv[1:] if t.startswith("-") and t != "..." and t.split("=", 1)[0] not in known]
        return f"unknown options {bad}" if bad else None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as e:
        if e.code:
            return err.getvalue().strip() or f"exit {e.code}"
    return None


def check_markdown(text: str, name: str) -> tuple[list[str], int]:
    """(problems, number of dbgpu commands checked) in one Markdown text."""
    problems, n = [], 0
    targets = _make_targets()
    for lineno, line in shell_lines(text):
        try:
            segments = _segments(line)
        except ValueError as e:                         # unbalanced quotes
            problems.append(f"{name}:{lineno}: cannot split `{line}`: {e}")
            continue
        for words in segments:
            try:
                found = dbgpu_argv(words)
            except AssertionError as e:
                problems.append(f"{name}:{lineno}: {e}")
                continue
            if found is None:
                continue
            kind, args = found
            if kind == "make":
                problems += [f"{name}:{lineno}: no make target `{t}`" for t in args if t not in targets]
                continue
            n += 1
            why = check_argv(args)
            if why:
                problems.append(f"{name}:{lineno}: `{shlex.join(['dbgpu', *args])}`: {why}")
    return problems, n


def test_every_dbgpu_command_in_the_docs_parses():
    problems, counts = [], {}
    for path in DOCS:
        p, n = check_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        problems += p
        counts[path.name] = n
    assert not problems, "shell blocks that the CLI does not parse:\n" + "\n".join(problems)
    assert counts["README.md"] >= 6, counts                  # the quickstart: run, score, fit, report, compare, ...
    assert sum(counts.values()) >= 20, counts                # the docs' examples are read, not skipped


def test_the_block_check_catches_renamed_options_and_reads_launch_lines():
    good = "\n".join([
        "```sh",
        "make run     # the main job",
        "dbgpu score --model $MODEL --task word100 \\",
        "    --state-list A,B --out $DIR   # a comment",
        "PYTHONPATH=examples/colors python -m dbgpu fit $DIR --out fit && dbgpu report fit",
        "torchrun --nnodes 2 --node-rank $NODE_RANK -m dbgpu score --model M --task word100 --states S.json --out D",
        "accelerate launch --num_processes 8 -m dbgpu run --out D",
        "pip install -e examples/colors",
        "```",
        "```console",
        "$ dbgpu run --dry-run",
        "| rows per forward | 10 |",
        "```",
        "```python",
        "dbgpu.kernel('m', 't', ['A'])",
        "```",
    ])
    problems, n = check_markdown(good, "good.md")
    assert problems == [] and n == 6
    bad = "\n".join([
        "```sh",
        "dbgpu score --modle M --task word100 --state-list A,B --out D",
        "torchrun --nproc-per-node 8 -m dbgpu score --model M --task word100 \\",
        "    --states S.json --out D --batch 8",
        "dbgpu fit ... --rejekt low",
        "dbgpu scorre --model M",
        "make tests",
        "```",
    ])
    problems, n = check_markdown(bad, "bad.md")
    assert [p.split(":", 2)[1] for p in problems] == ["2", "3", "5", "6", "7"], problems
    assert "--modle" in problems[0] and "--batch" in problems[1] and "--rejekt" in problems[2]


#: pages other branches add; links to them may wait for the merge
PENDING: set[str] = set()
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")


def anchors(md: str) -> set[str]:
    """GitHub's heading anchors of a Markdown text (lower case, punctuation dropped,
    spaces to hyphens), outside code blocks."""
    text = FENCE.sub("", md)
    out = set()
    for h in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file, or whose #anchor in a Markdown file, is missing."""
    bad = []
    for target, anchor in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target) or Path(target).name in PENDING:
            continue
        dest = (path.parent / target) if target else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}#{anchor} (no such heading)")
    return bad


@pytest.mark.parametrize("page", ["index", "cli", "outputs", "tasks", "scoring", "analysis", "gpu",
                                  "benchmarks", "reliability"])
def test_the_docs_pages_exist(page):
    assert (ROOT / "docs" / f"{page}.md").is_file()


def test_links_in_the_readme_and_docs_resolve():
    """Every relative link to a file, and every #anchor into a Markdown page, exists (links
    to the pages other branches add are allowed to wait)."""
    bad = {str(p.relative_to(ROOT)): broken_links(p) for p in DOCS}
    assert not any(bad.values()), {k: v for k, v in bad.items() if v}


def test_the_link_check_catches_a_renamed_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Batch plan (`--dry-run`)\n\n```sh\n# not a heading\n```\n")
    (tmp_path / "b.md").write_text("[ok](a.md#batch-plan---dry-run) [gone](a.md#batch-plan) "
                                   "[code](a.md#not-a-heading) [file](c.md) [self](#title)\n# Title\n")
    assert broken_links(tmp_path / "b.md") == ["a.md#batch-plan (no such heading)",
                                               "a.md#not-a-heading (no such heading)", "c.md (no such file)"]


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "make run" in text and "make test" in text and "## Python API" in text
    # within two links of the README: writing a plugin, stats.json's fields, several GPUs
    assert "docs/tasks.md" in text and "## Writing a task plugin" in (ROOT / "docs" / "tasks.md").read_text()
    assert "docs/outputs.md#statsjson-field-by-field" in text
    assert "docs/gpu.md" in text and "torchrun" in (ROOT / "docs" / "gpu.md").read_text()
