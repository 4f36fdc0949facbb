"""mkdocs hook: read table cells as GitHub does.

GitHub needs a pipe inside a code span of a table cell escaped (`<\\|bad\\|>`) and shows it without the backslash;
Python-Markdown splits no cell inside a code span and keeps the backslash. The pages keep GitHub's form (they are
read on GitHub too) and this hook drops the backslash before Python-Markdown reads a table row."""

import re

CODE_SPAN = re.compile(r"(`+)(.+?)\1")
FENCE = re.compile(r"^\s*(```|~~~)")


def unescape_row(line: str) -> str:
    return CODE_SPAN.sub(lambda m: m.group(1) + m.group(2).replace("\\|", "|") + m.group(1), line)


def on_page_markdown(markdown: str, **kwargs) -> str:
    lines, fenced = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.lstrip().startswith("|"):
            line = unescape_row(line)
        lines.append(line)
    return "\n".join(lines)
