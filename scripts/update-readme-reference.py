"""Rewrites the config reference in README.md from agent/config.py (`make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"

text = README.read_text()
pattern = re.compile(re.escape(START) + ".*" + re.escape(END), re.S)
if not pattern.search(text):
    raise SystemExit("README.md lacks the config-reference markers")
README.write_text(pattern.sub(lambda _: START + reference_markdown() + END, text))
print("README.md: config reference updated")
