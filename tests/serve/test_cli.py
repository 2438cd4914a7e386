"""`deltamem-agents serve` as a user starts it: a subprocess on a free port, a tiny model dir, a store URL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serve_command(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from deltamem_agents.backbone import load_tokenizer

    tok = load_tokenizer(None)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    port = _free_port()
    db = tmp_path / "s.db"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "deltamem_agents.cli", "serve", "--port", str(port),
                             "--model", str(tmp_path / "tiny"), "--adapter", "none", "--db", f"sqlite:///{db}",
                             "--max-body-bytes", "2000", "--budget", "512", "--reserve", "64", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "session_id": "s"})
        assert r.status_code == 200 and r.json()["model"] == "tiny"
        assert httpx.get(f"{url}/v1/sessions/s").json()["num_messages"] == 2
        big = {"messages": [{"role": "user", "content": "x" * 3000}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=big).status_code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert db.is_file()  # the sessions went to the file the store URL named
