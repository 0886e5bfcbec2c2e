"""The docs stay true.

Every `moai-export` / `moai-bench` command line the project's Markdown files and the commands'
own --help texts show (code blocks, inline code, help examples) names a subcommand that exists
and only options that subcommand has; every script shown (`bench/*.py`, `serve/*/*.sh`,
`train/*.sh`) exists and takes the flags shown; README.md holds the one table of exit codes,
equal to `moai_export.commands.base`'s constants, and no doc or help text claims another code for a
failed gate. Placeholders (DIR, BASE+ADAPTER, ...) are never checked; `[--x]` optional parts and
`a|b` alternatives are checked one by one.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
from click.testing import CliRunner

from moai_export.commands import base as cli_base
from moai_export.commands.bench_cli import main as bench_main
from moai_export.commands.export_cli import main as export_main

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS: dict[str, click.Group] = {"moai-export": export_main, "moai-bench": bench_main}
# `python -m MODULE ...` that is one of the programs above (torchrun runs training this way)
MODULE_PROGRAMS = {"moai_export.train": ("moai-export", "train"), "moai_export.commands.export_cli": ("moai-export", None)}
# The files the docs test must find commands in (the rest is found by walking the tree).
REQUIRED_DOCS = ("README.md", "bench/README.md", "serve/triton/README.md", "serve/vllm/README.md",
                 "serve/gateway/README.md")

PROGRAM_START = re.compile(
    r"(?<![\w./-])(moai-export|moai-bench|-m (?:moai_export(?:\.\w+)+)|(?:\./)?(?:bench|serve|train)/[\w./-]+\.(?:py|sh))"
    r"(?![\w-])")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")


# --- where command lines are shown ---------------------------------------------------------------

@dataclass(frozen=True)
class Snippet:
    """Text that shows commands: one logical line of a code block or help text, or one inline code span."""

    source: str  # a doc's path, or "moai-bench corpus --help"
    text: str
    in_help: bool = False  # help texts align columns with 2+ spaces: a run of them ends a command


@functools.lru_cache(maxsize=None)
def markdown_files() -> tuple[Path, ...]:
    """Every *.md of the project; hidden folders (.venv*, .git, .carry), build/ and bench/results/
    are not walked into."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        here = Path(folder)
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("build", "__pycache__")
                         and (here / d) != ROOT / "bench" / "results"]
        found += [here / name for name in files if name.endswith(".md")]
    return tuple(sorted(found))


def logical_lines(lines: list[str]) -> list[str]:
    """Lines with their `\\` continuations joined."""
    joined, current = [], ""
    for line in lines:
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        joined.append(current + line.strip())
        current = ""
    if current:
        joined.append(current)
    return joined


def markdown_snippets(path: Path) -> list[Snippet]:
    source = str(path.relative_to(ROOT))
    snippets, prose, fence, block = [], [], None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        marker = line.strip()[:3]
        if fence is None and marker in ("```", "~~~"):
            fence, language, block = marker, line.strip()[3:].strip(), []
        elif fence is not None and line.strip().startswith(fence):
            if language != "python":  # shell and plain blocks; python blocks show no command lines
                snippets += [Snippet(source, text) for text in logical_lines(block)]
            fence = None
        elif fence is not None:
            block.append(line)
        else:
            prose.append(line)
    text = "\n".join(prose)
    for match in re.finditer(r"(`+)(.+?)\1", text, flags=re.S):
        # a span may wrap across lines; `\|` is a table cell's escaped pipe
        snippets.append(Snippet(source, " ".join(match.group(2).replace("\\|", "|").split())))
    return snippets


@functools.lru_cache(maxsize=None)
def help_texts() -> dict[str, str]:
    """{"moai-export merge --help": its text, ...}, every group and subcommand, unwrapped."""
    texts = {}
    for program, group in PROGRAMS.items():
        for name in [None, *sorted(group.commands)]:
            argv = [name, "--help"] if name else ["--help"]
            result = CliRunner().invoke(group, argv, prog_name=program, terminal_width=10_000,
                                        max_content_width=10_000)
            assert result.exit_code == 0, (program, argv, result.output)
            texts[" ".join([program, *argv])] = result.output
    return texts


def help_snippets() -> list[Snippet]:
    return [Snippet(source, line, in_help=True) for source, text in help_texts().items()
            for line in logical_lines(text.splitlines())]


# --- command lines in a snippet ------------------------------------------------------------------

@dataclass(frozen=True)
class Shown:
    """One command line as a doc shows it, from its program on."""

    source: str
    program: str  # moai-export, moai-bench, -m MODULE, or a script's path
    text: str  # the arguments after the program, cut where the command ends
    unquoted_ampersand: bool  # `&` inside a word: the shell would end the command there

    @property
    def tokens(self) -> list[str]:
        try:
            return shlex.split(self.text)
        except ValueError:  # an unbalanced quote in prose: still check what can be read
            return self.text.split()


def cut_command(text: str, in_help: bool) -> tuple[str, bool]:
    """`text` up to where the shell command ends (a comment, `;`, `&&`, `||`, a pipe, `&`, a
    closing backtick or parenthesis, an opening parenthesis that starts an aside), and whether
    an unquoted `&` sits inside a word on the way."""
    # `moai-bench throughput | parity | retrieval` names alternatives, not a pipe
    text = re.sub(r"^(\s*[\w-]+)((?:\s*\|\s*[\w-]+)+)", lambda m: m.group(1) + re.sub(r"\s+", "", m.group(2)), text)
    quote, ampersand = None, False
    for i, char in enumerate(text):
        before, after = text[i - 1] if i else " ", text[i + 1] if i + 1 < len(text) else " "
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and before.isspace():
            return text[:i], ampersand
        elif char in ";`)" or (char == "(" and before.isspace()) or text.startswith(("&&", "||"), i):
            return text[:i], ampersand
        elif char in "|&" and before.isspace() and after.isspace():
            return text[:i], ampersand
        elif char == "&" and before not in "<>" and not before.isspace() and not after.isspace():
            ampersand = True
        elif in_help and text.startswith("  ", i):
            return text[:i], ampersand
    return text, ampersand


def commands_in(snippet: Snippet) -> list[Shown]:
    starts = list(PROGRAM_START.finditer(snippet.text))
    shown = []
    for n, match in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(snippet.text)
        text, ampersand = cut_command(snippet.text[match.end():end], snippet.in_help)
        shown.append(Shown(snippet.source, match.group(1).removeprefix("./"), text.strip(), ampersand))
    return shown


@functools.lru_cache(maxsize=None)
def all_snippets() -> tuple[Snippet, ...]:
    return tuple(s for doc in markdown_files() for s in markdown_snippets(doc)) + tuple(help_snippets())


@functools.lru_cache(maxsize=None)
def all_commands() -> tuple[Shown, ...]:
    return tuple(c for s in all_snippets() for c in commands_in(s))


def flags_in(tokens: list[str]) -> list[str]:
    """The flags among `tokens`: `[--x]`, `--x=V`, `--a|--b` and `VALUE|--b` included."""
    flags = []
    for token in tokens:
        for piece in token.strip("[](),.:").split("|"):
            piece = piece.strip("[](),.:").split("=", 1)[0]
            if FLAG.match(piece):
                flags.append(piece)
    return flags


# --- what exists ---------------------------------------------------------------------------------

def click_options(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)  # --bf16 / --no-bf16
    return names


def python_flags(path: Path) -> set[str]:
    """The flags an argparse (`add_argument`) or click (`option`) script declares, read from its source."""
    flags = {"--help", "-h"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name not in ("add_argument", "option"):
            continue
        declared = [part for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    for part in arg.value.split("/") if part.startswith("-")]
        flags.update(declared)
        if any(k.arg == "action" and getattr(k.value, "attr", "") == "BooleanOptionalAction" for k in node.keywords):
            flags.update("--no-" + f[2:] for f in declared if f.startswith("--"))
    return flags


def module_path(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__main__.py" if path.is_dir() else path.with_suffix(".py")


@functools.lru_cache(maxsize=None)
def script_flags(relative: str) -> frozenset[str]:
    """A script's flags: a Python script's declared ones; a shell script's own plus those of the
    command it hands its arguments to (`-m MODULE`, `moai-export COMMAND`)."""
    path = ROOT / relative
    if path.suffix == ".py":
        return frozenset(python_flags(path))
    text = path.read_text(encoding="utf-8")
    flags = set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", text)) | {"--help", "-h"}
    for module, command in re.findall(r"-m (moai_export[\w.]*)(?:\s+\"?(\w+))?", text):
        if module in MODULE_PROGRAMS:
            program, fixed = MODULE_PROGRAMS[module]
            flags |= click_options(PROGRAMS[program].commands[fixed or command])
        else:
            flags |= python_flags(module_path(module))
    for command in re.findall(r"moai-export (\w+)", text):
        flags |= click_options(export_main.commands[command])
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def script_takes_arguments(relative: str) -> bool | None:
    """Whether a script takes positional arguments: a Python script's declared ones; a shell
    script's usage line in its header comment (`#   serve/x/run.sh DIR [--flag]`); None: unknown."""
    path = ROOT / relative
    if path.suffix == ".py":
        return any(isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                   and node.args and isinstance(node.args[0], ast.Constant) and not str(node.args[0].value).startswith("-")
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
    usage = re.search(rf"^#\s+{re.escape(relative)}\s+(\S+)", path.read_text(encoding="utf-8"), flags=re.M)
    return None if usage is None else not usage.group(1).startswith(("[", "-"))


def problems_of(shown: Shown) -> list[str]:
    where = f"{shown.source}: `{shown.program} {shown.text}`"
    tokens = shown.tokens
    if shown.program.startswith("-m "):
        program, fixed = MODULE_PROGRAMS.get(shown.program[3:], (None, None))
        if program is None:
            return [f"{where}: {shown.program[3:]} is not a command module"]
        tokens = [fixed, *tokens] if fixed else tokens
    elif shown.program in PROGRAMS:
        program = shown.program
    else:
        if not (ROOT / shown.program).is_file():
            return [f"{where}: {shown.program} does not exist"]
        known = script_flags(shown.program)
        problems = [f"{where}: {shown.program} has no {flag}" for flag in flags_in(tokens) if flag not in known]
        if tokens and not tokens[0].startswith(("-", "[", "2>")) and script_takes_arguments(shown.program) is False:
            problems.append(f"{where}: {shown.program} takes no argument {tokens[0]!r}")
        return problems
    group = PROGRAMS[program]
    if not tokens or tokens[0].startswith(("-", "[")) or tokens[0].isupper():  # the program itself: --help, USAGE
        commands = {program: group}
    else:
        commands = {name: group.commands.get(name) for name in tokens[0].split("|")}
        tokens = tokens[1:]
    problems = []
    for name, command in commands.items():
        if command is None:
            problems.append(f"{where}: {program} has no command {name!r}")
            continue
        options = click_options(command) | ({"--version"} if command is group else set())
        problems += [f"{where}: {program} {name} has no {flag}" for flag in flags_in(tokens) if flag not in options]
    return problems


# --- the tests -----------------------------------------------------------------------------------

def test_every_command_line_shown_names_real_commands_options_and_scripts():
    commands = all_commands()
    problems = [p for c in commands for p in problems_of(c)]
    assert not problems, "\n".join(problems)
    per_source = {}
    for c in commands:
        per_source[c.source] = per_source.get(c.source, 0) + 1
    for doc in REQUIRED_DOCS:
        assert per_source.get(doc), f"no command line found in {doc}"
    moai = sum(1 for c in commands if not c.program.endswith((".py", ".sh")))
    print(f"docs test: checked {len(commands)} command lines ({moai} moai-export / moai-bench, "
          f"{len(commands) - moai} scripts) in {len(markdown_files())} Markdown files and "
          f"{len(help_texts())} --help texts")


def test_every_mention_of_a_program_in_code_is_checked():
    """The extractor misses nothing: each `moai-export` / `moai-bench` in a code block, an inline
    code span or a help text is one checked command line."""
    mention = re.compile(r"(?<![\w./-])moai-(?:export|bench)(?![\w-])")
    for snippet in all_snippets():
        found = [c for c in commands_in(snippet) if c.program in PROGRAMS]
        assert len(found) == len(mention.findall(snippet.text)), (snippet.source, snippet.text)


def test_no_command_line_has_an_unquoted_ampersand():
    """`?a=1&b=2` unquoted: the shell runs the command in the background and `b=2` as another."""
    bad = [f"{c.source}: `{c.program} {c.text}`" for c in all_commands() if c.unquoted_ampersand]
    assert not bad, "quote specs with '&' in them:\n" + "\n".join(bad)


def exit_code_tables() -> list[tuple[str, dict[int, str]]]:
    tables = []
    for doc in markdown_files():
        rows, inside = {}, False
        for line in doc.read_text(encoding="utf-8").splitlines() + [""]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if re.match(r"^\|\s*code\s*\|\s*meaning\s*\|", line.strip()):
                inside, rows = True, {}
            elif inside and line.strip().startswith("|"):
                if cells[0].isdigit():
                    rows[int(cells[0])] = cells[1]
            elif inside:
                tables.append((str(doc.relative_to(ROOT)), rows))
                inside = False
    return tables


# Each exit code and a word its row in the README must use.
EXIT_MEANINGS = {
    cli_base.EXIT_OK: "done",
    cli_base.EXIT_ERROR: "bad input",
    cli_base.EXIT_USAGE: "command line",
    cli_base.EXIT_VERIFICATION_FAILED: "verification failed",
    cli_base.EXIT_INTERRUPTED: "interrupted",
}


def test_readme_holds_the_one_exit_code_table_and_it_is_the_codes():
    constants = {value for name, value in vars(cli_base).items() if name.startswith("EXIT_")}
    assert constants == set(EXIT_MEANINGS), "a new exit code: give it its meaning here and a row in README.md"
    tables = exit_code_tables()
    assert [source for source, _ in tables] == ["README.md"], f"exactly one exit-code table, in README.md: {tables}"
    rows = tables[0][1]
    assert set(rows) == constants, f"README.md's exit codes {sorted(rows)} != cli_base's {sorted(constants)}"
    for code, word in EXIT_MEANINGS.items():
        assert word in rows[code].lower(), f"README.md: exit code {code} should say {word!r}: {rows[code]!r}"


EXIT_CLAIM = re.compile(r"\bexit(?:s|ed|ing)?(?: code)?(?: is| with)? (\d+)\b|\b(\d+): verification failed", re.I)
GATE_WORDS = re.compile(r"gate|verif|\bfail|threshold|refuse", re.I)


def test_no_doc_or_help_claims_another_exit_code():
    """A failed gate exits EXIT_VERIFICATION_FAILED everywhere; any other code a doc names is in
    the table (or is a launcher's 128 + signal number: 129 SIGHUP, 130 Ctrl-C, 143 SIGTERM)."""
    texts = {str(d.relative_to(ROOT)): d.read_text(encoding="utf-8") for d in markdown_files()} | help_texts()
    documented = set(EXIT_MEANINGS)
    wrong, claims = [], 0
    for source, text in texts.items():
        for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
            sentence = " ".join(sentence.split())
            for match in EXIT_CLAIM.finditer(sentence):
                claims += 1
                code = int(match.group(1) or match.group(2))
                if GATE_WORDS.search(sentence) and code != cli_base.EXIT_VERIFICATION_FAILED:
                    wrong.append(f"{source}: a failed gate exits {cli_base.EXIT_VERIFICATION_FAILED}, not {code}: "
                                 f"{sentence!r}")
                elif code not in documented and code <= 128:
                    wrong.append(f"{source}: exit code {code} is not in README.md's table: {sentence!r}")
    assert claims, "no exit code claims found: the pattern no longer matches the docs"
    assert not wrong, "\n".join(wrong)


def source_files() -> list[Path]:
    """The project's code and scripts (results and environments excluded)."""
    found = [ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("moai_export", "bench", "serve", "train", "tests", "triton_models", ".ci", "deploy"):
        found += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ".txt", "")
                  and "results" not in p.relative_to(ROOT).parts and "__pycache__" not in p.parts]
    return [p for p in found if p.is_file()]


def test_every_environment_variable_the_code_reads_is_documented():
    section = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Environment variables", 1)
    assert len(section) == 2, "README.md has no 'Environment variables' section"
    documented = set(re.findall(r"^\| `(\w+)` \|", section[1].split("\n## ", 1)[0], flags=re.M))
    read = {name for path in source_files() if path.name != "test_docs.py"
            for name in re.findall(r"\bMOAI_[A-Z_]+\b", path.read_text(encoding="utf-8", errors="replace"))}
    assert read, "no MOAI_* variable found: the pattern no longer matches the code"
    assert not read - documented, f"not in README.md's 'Environment variables': {sorted(read - documented)}"


def test_no_issue_numbers_in_docs_or_code():
    """Readers have no issue tracker: say what the thing is, not which ticket asked for it."""
    numbered = re.compile(r"\bissues? #?\d+", re.I)
    found = [f"{path.relative_to(ROOT)}: {match.group(0)!r}" for path in [*markdown_files(), *source_files()]
             for match in numbered.finditer(path.read_text(encoding="utf-8", errors="replace"))]
    assert not found, "\n".join(found)


SOURCE_PATH = re.compile(r"(?<![\w./-])((?:moai_export|bench|serve|train|tests|triton_models|\.ci|deploy)/[\w./*-]*[\w/*])")


def test_every_source_path_the_docs_name_exists():
    """A file or folder of the checkout named in a README or a --help text exists (a module that
    moved leaves no stale path behind); globs must match something."""
    missing, checked = [], 0
    texts = [(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")) for path in markdown_files()]
    texts += [(f"--help of {name}", text) for name, text in help_texts().items()]
    for where, text in texts:
        for match in SOURCE_PATH.finditer(text):
            name = match.group(1).rstrip(".")
            if any(re.fullmatch(r"[A-Z][A-Z0-9_-]*", part) for part in name.split("/")):
                continue  # a placeholder (bench/results/COMMAND-DATE-TIME)
            checked += 1
            if not (any(ROOT.glob(name.rstrip("/"))) if "*" in name else (ROOT / name).exists()):
                missing.append(f"{where}: {name}")
    print(f"{checked} source paths checked")
    assert checked > 20 and not missing, missing
