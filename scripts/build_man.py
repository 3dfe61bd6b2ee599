"""Man pages for mom-checkpoint and mom-restart, generated from their argparse parsers.

    python scripts/build_man.py OUTPUT_DIR

argparse-manpage does the work; this script only feeds it the two parsers and tidies what argparse's
raw-description texts turn into in troff: indented lines (call forms, examples, the exit status
table) stay as they are written instead of being filled into paragraphs, a text line starting with
an apostrophe is not taken for a troff request, and the SYNOPSIS lists every calling form. The date
comes from SOURCE_DATE_EPOCH (scripts/build-man.sh sets it from the last commit), so the pages are
reproducible. mom-checkpoint-run has no parser: its page is packaging/man/mom-checkpoint-run.8.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from argparse_manpage.manpage import Manpage  # type: ignore[import-untyped]

from mom_checkpoint import __version__

SECTION = "8"
MANUAL = "System Administration"


@dataclass(frozen=True)
class Page:
    program: str
    module: str
    summary: str
    files: tuple[tuple[str, str], ...]
    see_also: str


PAGES = (
    Page(
        "mom-checkpoint",
        "mom_checkpoint.cli.checkpoint",
        "checkpoint hook for TORQUE/PBS pbs_mom, and checkpoint administration",
        (
            ("/etc/mom-checkpoint/config.toml", "the configuration (TOML: every key with its default)"),
            ("/var/spool/checkpoint/", "the images: a folder per job run, a generation per checkpoint"),
            ("/var/log/mom-checkpoint.log", "one JSON line per step of every call"),
            ("/usr/share/doc/mom-checkpoint/mom_priv-config", "the lines pbs_mom's mom_priv/config needs"),
        ),
        "mom-restart(8), mom-checkpoint-run(8), criu(8), pbs_mom(8), qsub(1), qchkpt(1), qhold(1)",
    ),
    Page(
        "mom-restart",
        "mom_checkpoint.cli.restart",
        "restart a checkpointed TORQUE/PBS job (pbs_mom's restart script)",
        (
            ("/etc/mom-checkpoint/config.toml", "the configuration"),
            ("/var/spool/checkpoint/", "the images"),
            (
                "/var/spool/checkpoint/.sessions/",
                "the session of each restarted job, for its next checkpoint",
            ),
        ),
        "mom-checkpoint(8), mom-checkpoint-run(8), criu(8), pbs_mom(8), qalter(1)",
    ),
)


def build_parser(module: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = importlib.import_module(module).build_parser()
    # A parser with its own multi-line usage hands that whole usage to its subcommands as their prog;
    # in the man page each subcommand is called by its plain name.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                sub.prog = f"{parser.prog} {name}"
    return parser


def synopsis(parser: argparse.ArgumentParser) -> list[str]:
    """The calling forms the description lists ('  prog ARGS   (comment)'), then those of a hand-written
    usage; argparse's generated usage only when neither gives any."""
    prog = parser.prog
    forms: list[str] = []
    for line in (parser.description or "").splitlines():
        if line.startswith(f"  {prog} "):
            forms.append(re.split(r"\s{2,}", line.strip())[0])
    if forms and parser.usage is None:
        return forms
    usage = parser.format_usage().removeprefix("usage: ")
    for line in re.split(r"\n(?=\s*" + re.escape(prog) + r"\b)", usage.strip()):
        form = " ".join(line.split())
        if form not in forms:
            forms.append(form)
    return forms


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def tidy(troff: str) -> str:
    """Keep indented text (and usage lines) as written; shield text lines starting with an apostrophe;
    no hyphenation or justification."""
    out: list[str] = []
    verbatim = False
    for raw in troff.splitlines():
        if raw.startswith(".SH NAME"):
            out += [".ad l", ".nh"]  # ragged right, no hyphens: paths and options stay whole
        is_text = not raw.startswith(".")
        line = "\\&" + raw if is_text and raw.startswith("'") else raw
        keep = is_text and (line[:1].isspace() or line.startswith("usage: "))
        if keep and not verbatim:
            out.append(".nf")
        elif not keep and verbatim:
            out.append(".fi")
        verbatim = keep
        out.append(line)
    if verbatim:
        out.append(".fi")
    return "\n".join(out) + "\n"


def render(page: Page) -> str:
    parser = build_parser(page.module)
    manpage = Manpage(
        parser,
        _data={
            "project_name": "mom-checkpoint",
            "version": __version__,
            "manual_section": SECTION,
            "manual_title": MANUAL,
            "description": page.summary,
        },
    )
    lines = []
    for form in synopsis(parser):
        words = form.split(" ", 1)
        lines.append(f".B {escape(words[0])}")
        if len(words) > 1:
            lines.append(escape(words[1]))
        lines.append(".br")
    manpage.add_section("synopsis", "=", "\n".join(lines[:-1]))
    manpage.add_section("environment", "=", ".TP\n.B MOM_CHECKPOINT_CONFIG\n" + escape(
        "the configuration file to read instead of /etc/mom-checkpoint/config.toml (pbs_mom passes no "
        "environment to its hooks, so on a node the default path is the one in use)"
    ))  # fmt: skip
    files = []
    for path, meaning in page.files:
        files += [".TP", f".I {escape(path)}", escape(meaning)]
    manpage.add_section("files", "=", "\n".join(files))
    manpage.add_section("see also", "=", escape(page.see_also))
    return tidy(str(manpage))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: build_man.py OUTPUT_DIR\n")
        return 64
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for page in PAGES:
        target = out / f"{page.program}.{SECTION}"
        target.write_text(render(page))
        print(f"build_man: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
