"""Session routes: read, fork, export, import, delete, over HTTP on the real server."""

from __future__ import annotations

import httpx
import torch


def test_fork_export_import_delete(server):
    url, chat = server.url, server.chat
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "I keep bees."}],
                                                       "session_id": "origin", "max_tokens": 3})
    assert r.status_code == 200 and r.headers["x-session-id"] == "origin"
    info = httpx.get(f"{url}/v1/sessions/origin").json()
    assert info["id"] == "origin" and info["num_messages"] == 2 and info["version"] == 1 and info["state_bytes"] > 0

    fork = httpx.post(f"{url}/v1/sessions/origin/fork", json={"to": "branch"})
    assert fork.status_code == 200 and fork.json()["num_messages"] == 2
    assert httpx.post(f"{url}/v1/sessions/origin/fork", json={"to": "branch"}).status_code == 409
    auto = httpx.post(f"{url}/v1/sessions/origin/fork").json()["id"]
    assert auto.startswith("origin-fork-") and chat.history(auto) == chat.history("origin")
    assert torch.equal(chat.state("branch").S, chat.state("origin").S)
    httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "And goats."}],
                                                   "session_id": "branch", "max_tokens": 2})
    assert len(chat.history("branch")) == 4 and len(chat.history("origin")) == 2  # they evolve apart

    doc = httpx.get(f"{url}/v1/sessions/origin/export")
    assert doc.status_code == 200 and doc.json()["session_id"] == "origin"
    imp = httpx.post(f"{url}/v1/sessions/import", params={"session_id": "copy"}, content=doc.content)
    assert imp.status_code == 200 and imp.json()["num_messages"] == 2
    assert chat.history("copy") == chat.history("origin")
    assert torch.equal(chat.state("copy").S, chat.state("origin").S)
    assert httpx.post(f"{url}/v1/sessions/import", params={"session_id": "copy"}, content=doc.content).status_code == 409
    assert httpx.post(f"{url}/v1/sessions/import", params={"session_id": "copy", "overwrite": "true"},
                      content=doc.content).status_code == 200
    bad = httpx.post(f"{url}/v1/sessions/import", params={"session_id": "junk"}, content=b'{"format": "nope"}')
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_export"
    tampered = doc.content.replace(b"I keep bees.", b"I keep wasps")
    assert httpx.post(f"{url}/v1/sessions/import", params={"session_id": "junk"}, content=tampered).status_code == 400
    assert "junk" not in chat.sessions()

    gone = httpx.delete(f"{url}/v1/sessions/copy")
    assert gone.status_code == 200 and gone.json() == {"id": "copy", "object": "session.deleted", "deleted": True}
    assert httpx.get(f"{url}/v1/sessions/copy").status_code == 404 and chat.state("copy") is None
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
