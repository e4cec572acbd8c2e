"""Rewrites the config reference in docs/configuration.md from the declarations (`make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import reference_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"

text = DOC.read_text()
pattern = re.compile(re.escape(START) + ".*" + re.escape(END), re.S)
if not pattern.search(text):
    raise SystemExit(f"{DOC} lacks the config-reference markers")
DOC.write_text(pattern.sub(lambda _: START + reference_markdown() + END, text))
print(f"{DOC}: config reference updated")
