"""The server sits on top of the chat model: it imports the public chat API and the errors, nothing lower."""

from __future__ import annotations

import ast
from pathlib import Path

SERVE = Path(__file__).resolve().parents[2] / "deltamem_agents" / "serve"
ALLOWED = ("..chat", "..errors", "deltamem_agents.chat", "deltamem_agents.errors")


def test_serve_imports_only_the_chat_api():
    bad = []
    for f in SERVE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                lower = name.startswith("..") or name.startswith("deltamem_agents")
                if lower and not any(name == a or name.startswith(a + ".") for a in ALLOWED):
                    bad.append(f"{f.name} imports {name}")
    assert not bad, bad
