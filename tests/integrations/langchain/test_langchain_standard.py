"""langchain-tests' standard suites for ChatDeltaMem (unit: no weights; integration: the real backbone).

The integration suite runs a memory-on model, each test in its own δ-session, with short generations: 8 new
tokens for text, 48 when tools are bound (a Hermes tool call of SmolLM2 is ~25-40 tokens). Tests a 135M
instruct model cannot pass reliably (choosing to call a tool unprompted, following a format from few-shot
examples) are marked xfail(strict=False), as the suite's docstrings recommend.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from langchain_deltamem import ChatDeltaMem  # noqa: E402

TEXT_TOKENS = 8
TOOL_TOKENS = 48


class ChatDeltaMemShortTools(ChatDeltaMem):
    """ChatDeltaMem with a small text budget but enough tokens for a tool call when tools are bound."""

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):  # type: ignore[override]
        kwargs.setdefault("max_tokens", TOOL_TOKENS)
        return super().bind_tools(tools, tool_choice=tool_choice, **kwargs)


class TestChatDeltaMemUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatDeltaMem]:
        return ChatDeltaMem

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"adapter": "none", "db_path": ":memory:"}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


LONG_ARGS = pytest.mark.xfail(reason=f"free-text tool arguments do not fit the {TOOL_TOKENS}-token test budget",
                              run=False)
SMALL_MODEL = pytest.mark.xfail(reason="a 135M model does not reliably choose to call a tool / follow the format",
                                strict=False)


@pytest.mark.slow
class TestChatDeltaMemIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatDeltaMem]:
        return ChatDeltaMemShortTools

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # evaluated per test: each test gets its own δ-session in a process-local store
        return {"db_path": ":memory:", "max_tokens": TEXT_TOKENS, "session_id": f"std-{uuid.uuid4().hex[:12]}"}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict[str, list]:
        return {"invoke": [], "stream": []}

    # tool_choice=None (auto): the model must decide by itself to call the tool
    @SMALL_MODEL
    def test_tool_message_histories_string_content(self, model, my_adder_tool) -> None:
        super().test_tool_message_histories_string_content(model, my_adder_tool)

    @SMALL_MODEL
    def test_tool_message_histories_list_content(self, model, my_adder_tool) -> None:
        super().test_tool_message_histories_list_content(model, my_adder_tool)

    @pytest.mark.xfail(reason="with tool_choice='auto' the 135M model answers the weather question in text "
                              "instead of calling the tool", run=False)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    # free-text string arguments (a joke's setup and punchline, a company description in Chinese) need far
    # more tokens than this suite's budget: not run (see test_langchain_chat for structured output with ints)
    @LONG_ARGS
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model, schema_type) -> None:
        super().test_structured_output(model, schema_type)

    @LONG_ARGS
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model, schema_type) -> None:
        await super().test_structured_output_async(model, schema_type)

    @LONG_ARGS
    def test_structured_output_pydantic_2_v1(self, model) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @LONG_ARGS
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)

    @LONG_ARGS
    def test_unicode_tool_call_integration(self, model, *, tool_choice=None, force_tool_call=True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)
