"""A real uvicorn server on a free loopback port, serving a DeltaMemChat on a tiny random model over the real
default tokenizer (real chat templates at tiny-model speed) with a real SQLite session store."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from tests.conftest import tiny_ssw_on_real_tokenizer  # noqa: E402

MAX_BODY = 64 * 1024
BUSY_TIMEOUT = 0.3


class LiveServer:
    """``app`` served by uvicorn in a background thread on 127.0.0.1:<free port>."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="package")
def tiny_chat(tmp_path_factory):
    from deltamem_agents.chat.model import DeltaMemChat

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = tiny_ssw_on_real_tokenizer()
    chat = DeltaMemChat(model, tok, db=tmp_path_factory.mktemp("serve") / "sessions.db", budget=256, reserve=32)
    yield chat
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def server(tiny_chat):
    from deltamem_agents.serve import create_app

    app = create_app(tiny_chat, max_body_bytes=MAX_BODY, busy_timeout=BUSY_TIMEOUT, default_max_tokens=8)
    live = LiveServer(app)
    live.app, live.chat = app, tiny_chat
    yield live
    live.stop()


@pytest.fixture
def reference(tiny_chat):
    """An in-process chat model on the same weights with sessions of its own (in memory)."""
    return tiny_chat.on_same_weights(in_memory=True)


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
