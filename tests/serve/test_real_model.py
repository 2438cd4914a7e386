"""One end-to-end run on the real default model (SmolLM2-135M-Instruct + the shipped adapter), few tokens."""

from __future__ import annotations

import pytest
import torch

from tests.serve.conftest import LiveServer

pytestmark = pytest.mark.slow


def test_the_default_model_over_http_equals_in_process():
    from openai import OpenAI

    from deltamem_agents.chat.model import DeltaMemChat
    from deltamem_agents.serve import create_app

    chat = DeltaMemChat.from_default(in_memory=True)
    live = LiveServer(create_app(chat))
    try:
        client = OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        msg = [{"role": "user", "content": "My sister is called Daphne. Say hi."}]
        r = client.chat.completions.create(model=chat.model_name, messages=msg, max_tokens=6, user="real")
        ref = chat.on_same_weights(in_memory=True)
        assert r.choices[0].message.content == ref.chat(msg, session_id="real", max_new_tokens=6).text
        assert r.choices[0].message.content.strip()
        torch.testing.assert_close(chat.state("real").S, ref.state("real").S, rtol=1e-5, atol=1e-6)
    finally:
        live.stop()
