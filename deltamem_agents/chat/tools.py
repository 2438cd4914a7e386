"""Public home of the tool-call helpers (implemented in `deltamem_agents.runtime.tools` / `.grammar`)."""

from ..runtime.tools import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, normalize_tool_choice, normalize_tools,  # noqa: F401
                             parse_tool_calls, tools_system_text)

__all__ = ["TOOL_CALL_OPEN", "TOOL_CALL_CLOSE", "normalize_tools", "normalize_tool_choice", "tools_system_text",
           "parse_tool_calls", "ToolCallConstraint"]


def __getattr__(name: str):  # ToolCallConstraint needs xgrammar: import it only when asked for
    if name == "ToolCallConstraint":
        from ..runtime.grammar import ToolCallConstraint

        return ToolCallConstraint
    raise AttributeError(name)
