"""An API server process on a shared session store, for the two-servers test.

    python serve_child.py <store-url>

Serves a DeltaMemChat on the tiny random Llama over the real tokenizer (the same weights in every process:
fixed seeds) with `deltamem_agents.serve.create_app`, on 127.0.0.1 at a free port, which it prints first.
"""

from __future__ import annotations

import socket
import sys

import torch
import uvicorn

from deltamem_agents.chat import DeltaMemChat
from deltamem_agents.serve import create_app
from tests.conftest import tiny_ssw_on_real_tokenizer


def main(url: str) -> None:
    torch.set_num_threads(1)
    model, tok = tiny_ssw_on_real_tokenizer()
    chat = DeltaMemChat(model, tok, db=url, budget=256, reserve=32)
    app = create_app(chat, busy_timeout=60, default_max_tokens=2)  # wait for the other server's turn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1])
