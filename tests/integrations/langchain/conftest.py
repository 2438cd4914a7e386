"""Fixtures for the LangChain integration tests: a random δ-mem adapter on the real default backbone (the
shipped adapter may not exist yet) saved to a directory, and per-test SQLite databases."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain")
pytest.importorskip("langgraph")


@pytest.fixture(scope="session")
def random_adapter_dir(tmp_path_factory):
    """A saved random SSW adapter for SmolLM2-135M (non-trivial δ-states, deterministic)."""
    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.core.config import ssw
    from deltamem_agents.patching import attach
    from deltamem_agents.patching.adapter_io import save_adapter
    from tests.conftest import randomize_adapter

    model, _tok = load_backbone()
    adapter = attach(model, ssw())
    randomize_adapter(adapter, seed=5, scale=0.3)
    path = tmp_path_factory.mktemp("adapter") / "ssw-random"
    save_adapter(model, path)
    del model, adapter
    return str(path)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "sessions.db")


@pytest.fixture
def make_llm(random_adapter_dir, db):
    """Build ChatDeltaMem instances over the random adapter and this test's database."""
    from langchain_deltamem import ChatDeltaMem

    def make(**kw):
        params = {"adapter": random_adapter_dir, "db_path": db, "max_tokens": 8, "window_budget": 512,
                  "window_reserve": 32}
        params.update(kw)
        return ChatDeltaMem(**params)

    return make



@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """langchain-tests' async tests are plain `async def` (written for asyncio_mode=auto); this repo runs
    pytest-asyncio in strict mode, so mark the coroutine tests collected here before pytest-asyncio looks."""
    import inspect

    if name.startswith("test") and inspect.iscoroutinefunction(obj) and not any(
            m.name == "asyncio" for m in getattr(obj, "pytestmark", [])):
        pytest.mark.asyncio(obj)
    return None
