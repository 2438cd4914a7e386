"""Dependencies flow one way: core <- patching <- runtime <- chat <- integrations (docs/design.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "deltamem_agents"
_FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "llama_index")
# package under deltamem_agents -> imports it must never make
FORBIDDEN = {
    "core": ("transformers", "deltamem_agents.patching", "deltamem_agents.runtime", "deltamem_agents.chat",
             "..patching", "..runtime", "..chat", "..train", "..bench", *_FRAMEWORKS),
    "patching": ("deltamem_agents.runtime", "deltamem_agents.chat", "..runtime", "..chat", "..train", "..bench",
                 *_FRAMEWORKS),
    "runtime": ("..chat", "deltamem_agents.chat", "..train", "..bench", *_FRAMEWORKS),
    "chat": ("..train", "..bench", "deltamem_agents.train", "deltamem_agents.bench", *_FRAMEWORKS),
    # the trainer and the benchmark are tools side by side on the public layers: neither imports the other
    "train": ("..bench", "deltamem_agents.bench", "..chat", "deltamem_agents.chat", *_FRAMEWORKS),
    "bench": ("..train", "deltamem_agents.train", *_FRAMEWORKS),
    # generated data: no tensors, no models; the sampler reads the window policy's budget (a plain dataclass)
    "datasets": ("..patching", "..chat", "..train", "..bench", "torch", "transformers", "deltamem_agents.patching"),
}
DATASETS_RUNTIME_OK = ("..runtime.window",)
# integrations reach the product through its public API and the chat model, never the runtime below it
INTEGRATIONS_FORBIDDEN = ("deltamem_agents.runtime", "deltamem_agents.train", "deltamem_agents.bench",
                          "deltamem_agents.patching", "deltamem_agents.core")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def _hits(imp: str, forbidden: tuple[str, ...]) -> bool:
    return any(imp == x or imp.startswith(x + ".") for x in forbidden)


def test_imports_flow_one_way():
    bad = []
    for sub, forbidden in FORBIDDEN.items():
        for f in (PKG / sub).rglob("*.py"):
            for imp in _imports(f):
                if _hits(imp, forbidden):
                    bad.append(f"{f.relative_to(PKG)} imports {imp}")
                if sub == "datasets" and imp.startswith("..runtime") and imp not in DATASETS_RUNTIME_OK:
                    bad.append(f"{f.relative_to(PKG)} imports {imp}")
    assert not bad, bad


def test_the_product_never_imports_the_lab():
    bad = [f"{f.relative_to(ROOT)} imports {imp}" for root in (PKG, ROOT / "integrations")
           for f in root.rglob("*.py") for imp in _imports(f) if imp == "lab" or imp.startswith("lab.")]
    assert not bad, bad


def test_integrations_use_only_the_public_api():
    bad = [f"{f.relative_to(ROOT)} imports {imp}" for f in (ROOT / "integrations").rglob("*.py")
           for imp in _imports(f) if _hits(imp, INTEGRATIONS_FORBIDDEN)]
    assert not bad, bad


def test_the_layering_check_sees_a_wrong_import(tmp_path):
    """The checker itself: an import going the wrong way is reported (so a silent pass means something)."""
    f = tmp_path / "x.py"
    f.write_text("from deltamem_agents.runtime.store import SessionStore\nfrom ..train import trainer\n")
    imps = _imports(f)
    assert _hits("deltamem_agents.runtime.store", INTEGRATIONS_FORBIDDEN)
    assert any(_hits(i, FORBIDDEN["bench"]) for i in imps)


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, deltamem_agents; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
