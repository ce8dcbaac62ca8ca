"""How every `dmabuf-emu` help page is laid out: one formatter and one rule for defaults.

- Prose paragraphs (descriptions, epilog sentences) are wrapped to the terminal; a paragraph with
  an indented line (an example command, a list) is printed as written, so that every example can
  be copied as it stands (a wrapped command is two broken ones).
- An option's default is said once. `with_default` appends "(default: X)" unless the help text
  already says its default in its own words (as `--bind` does: "(default: 127.0.0.1)"). Help
  texts never write "(default N)" themselves, and no parser uses ArgumentDefaultsHelpFormatter:
  both together printed every such default twice.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

DEFAULT_MARK = "(default"


class Formatter(argparse.HelpFormatter):
    """Wrap prose, keep indented blocks (examples) verbatim."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = textwrap.dedent(text).strip("\n").split("\n\n")
        out = []
        for para in paragraphs:
            lines = para.splitlines()
            if any(line.startswith(" ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)


def with_default(text: str, default: Any) -> str:
    """`text` with its default said exactly once ("auto" for None)."""
    if DEFAULT_MARK in text:
        return text
    return f"{text} {DEFAULT_MARK}: {'auto' if default is None else default})"


def examples(*commands: str, note: str = "") -> str:
    """An epilog: the example commands, indented (kept verbatim), then an optional note."""
    text = "examples:\n" + "\n".join("  " + c for c in commands)
    return text + (f"\n\n{note}" if note else "")
