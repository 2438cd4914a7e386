"""Public home of the tool-call helpers (implemented in `deltamem_agents.runtime.tools` / `.grammar`)."""

from ..runtime.tools import *  # noqa: F401,F403
from ..runtime.tools import normalize_tool_choice, normalize_tools, parse_tool_calls, tools_system_text  # noqa: F401


def __getattr__(name: str):  # ToolCallConstraint needs xgrammar: import it only when asked for
    if name == "ToolCallConstraint":
        from ..runtime.grammar import ToolCallConstraint

        return ToolCallConstraint
    raise AttributeError(name)
