"""The process-wide registry of loaded weights and shared chat models.

- :func:`load_model`: a backbone + δ-mem adapter, loaded once per process and key (model dir, adapter dir,
  dtype, device). LangChain's standard tests build a model instance per test (and 10 in `test_init_time`), so
  weights must load once.
- :func:`model_lock`: the one lock of a loaded model. Every `DeltaMemChat` on the same weights takes it around
  its forward passes, so chat models sharing weights never run two generations on them at once.
- :func:`shared_chat`: one `DeltaMemChat` per configuration (weights, session database, window, system
  prompt), so framework objects that are rebuilt often share live sessions, their locks and KV caches.
  :func:`clear_shared_chats` forgets them (weights stay loaded), as a process restart would.

The shipped adapter for the default backbone lives in `deltamem_agents/adapters/smollm2-135m-instruct/`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import DeltaMemChat

__all__ = ["DEFAULT_ADAPTER", "resolve_adapter", "load_model", "model_lock", "shared_chat", "clear_shared_chats"]

DEFAULT_ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "smollm2-135m-instruct"
logger = logging.getLogger(__name__)
_CACHE: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()
_MODEL_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()
_CHATS: dict[tuple, "DeltaMemChat"] = {}
_CHATS_LOCK = threading.Lock()


def resolve_adapter(adapter: str | Path | None, model: str | Path | None) -> Path | None:
    """"default" -> the shipped adapter (default backbone only); None/"none" -> no δ-mem."""
    if adapter is None or str(adapter) == "none":
        return None
    if str(adapter) == "default":
        if model not in (None, "default", ""):
            raise ValueError("the shipped adapter is for the default backbone; pass adapter=<dir> for another model")
        if (DEFAULT_ADAPTER / "adapter_config.json").is_file():
            return DEFAULT_ADAPTER
        logger.warning("no trained δ-mem adapter is shipped for the default backbone yet: running the plain "
                       "backbone (pass adapter=<dir> to use one you trained)")
        return None
    return Path(adapter)


def load_model(model: str | Path | None = None, adapter: str | Path | None = "default", *, dtype: Any = None,
               device: str | None = None) -> tuple[Any, Any]:
    """(model with δ-mem attached when an adapter is given, tokenizer); cached per process.

    ``model``: None/"default" (the offline SmolLM2-135M-Instruct) or a local model dir; ``dtype`` (a
    `torch.dtype` or its name, "bfloat16") and ``device`` left None follow the device policy
    (`patching.device.resolve_policy`: CUDA with bf16 weights when available, else CPU in fp32; bf16 on the CPU
    is opt-in, `dtype="bfloat16"`)."""
    from ..backbone import load_backbone, resolve_model_dir
    from ..patching.device import resolve_policy

    model = None if model in ("default", "") else model
    mdir = resolve_model_dir(model)
    adir = resolve_adapter(adapter, model)
    policy = resolve_policy(device=device, dtype=dtype)
    device, dtype = policy.device, policy.dtype
    key = (str(mdir), str(adir), str(dtype), device)
    with _LOCK:
        if key not in _CACHE:
            net, tok = load_backbone(mdir, dtype=dtype, device=device)
            if adir is not None:
                from ..patching.adapter_io import load_adapter

                load_adapter(net, adir)
            _CACHE[key] = (net, tok)
            model_lock(net)
        return _CACHE[key]


def model_lock(model: Any) -> threading.RLock:
    """The lock of one loaded model, shared by every chat model that runs it (re-entrant)."""
    with _MODEL_LOCKS_GUARD:
        try:
            lock = _MODEL_LOCKS.get(model)
            if lock is None:
                lock = _MODEL_LOCKS[model] = threading.RLock()
        except TypeError:  # an object that cannot be weakly referenced: it gets a lock of its own
            return threading.RLock()
        return lock


def _db_key(db: str | Path | None, in_memory: bool) -> str:
    if in_memory or str(db) == ":memory:":
        return ":memory:"
    if isinstance(db, str) and "://" in db:  # a store URL names its database itself
        return db
    return str(Path(db).expanduser().resolve()) if db else ""


def shared_chat(model: str | Path | None = None, adapter: str | Path | None = "default", *, dtype: Any = None,
                device: str | None = None, db: str | Path | None = None, in_memory: bool = False,
                budget: int | None = None, reserve: int | None = None, system_prompt: str | None = None,
                use_memory: bool = True, model_name: str | None = None) -> "DeltaMemChat":
    """The process's one `DeltaMemChat` for this configuration, built on first use.

    Arguments are those of :meth:`DeltaMemChat.from_pretrained`. ``model_name`` is only a label: a chat
    model already built for the same configuration keeps its own. An in-memory database is shared too: all
    callers with ``in_memory=True`` (or ``db=":memory:"``) and otherwise equal settings see the same
    sessions."""
    from .model import DeltaMemChat

    model = None if model in ("default", "") else model
    key = (str(model), str(adapter), str(dtype), device, _db_key(db, in_memory), budget, reserve, system_prompt,
           use_memory)
    with _CHATS_LOCK:
        chat = _CHATS.get(key)
        if chat is None:
            kw: dict[str, Any] = {"db": db, "in_memory": in_memory, "budget": budget, "reserve": reserve,
                                  "system_prompt": system_prompt, "use_memory": use_memory}
            if model_name is not None:
                kw["model_name"] = model_name
            chat = _CHATS[key] = DeltaMemChat.from_pretrained(model, adapter=adapter, dtype=dtype, device=device,
                                                              **kw)
        return chat


def clear_shared_chats() -> None:
    """Forget the shared chat models (their live sessions); loaded weights stay cached.

    The next :func:`shared_chat` builds a fresh chat model that reads its sessions back from the store."""
    with _CHATS_LOCK:
        _CHATS.clear()
