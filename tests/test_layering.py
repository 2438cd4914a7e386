"""Dependencies flow one way: core <- patching <- runtime <- chat <- integrations (design.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "deltamem_agents"
# module -> packages it must never import
FORBIDDEN = {
    "core": ("transformers", "deltamem_agents.patching", "deltamem_agents.runtime", "deltamem_agents.chat",
             "langchain", "llama_index", "..patching", "..runtime", "..chat", "..train", "..bench"),
    "patching": ("deltamem_agents.runtime", "deltamem_agents.chat", "..runtime", "..chat", "..train", "..bench",
                 "langchain", "llama_index"),
    "runtime": ("..chat", "deltamem_agents.chat", "..train", "..bench", "langchain", "llama_index"),
    "datasets": ("..patching", "..runtime", "..chat", "..train", "..bench", "torch", "transformers"),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def test_imports_flow_one_way():
    bad = []
    for sub, forbidden in FORBIDDEN.items():
        for f in (PKG / sub).rglob("*.py"):
            for imp in _imports(f):
                if any(imp == x or imp.startswith(x + ".") for x in forbidden):
                    bad.append(f"{f.relative_to(PKG)} imports {imp}")
    assert not bad, bad


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, deltamem_agents; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
