"""Tests of chat tools: tool normalization, the tool prompt, tool-call parsing (with a hypothesis fuzz) and
the xgrammar tool-call constraint, driven with the real SmolLM2 tokenizer and seeded random logits."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltamem_agents.runtime import grammar as grammar_mod
from deltamem_agents.runtime.tools import (
    ToolCallConstraint,
    normalize_tool_choice,
    normalize_tools,
    parse_tool_calls,
    tools_system_text,
)
from deltamem_agents.errors import DeltaMemError, InvalidMessageError
from deltamem_agents.runtime.messages import template_text, validate_message

V = 49152
EOS = 2
MAX_STEPS = 400

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "options": {
            "type": "object",
            "properties": {"hourly": {"type": "boolean"}, "lang": {"type": "string"}},
            "required": ["hourly"],
        },
    },
    "required": ["city", "unit", "options"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city.",
                                      "parameters": WEATHER_SCHEMA}},
    {"name": "get_time", "description": "Current time.",
     "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}},
]
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TOOLS[1]["parameters"]}


# ---------------------------------------------------------------- helpers

def validate(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    """A tiny JSON-schema check (type, enum, properties, required, no extra keys); asserts on failure."""
    types = {"string": str, "boolean": bool, "object": dict, "array": list}
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in enum"
    t = schema.get("type")
    if t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: {value!r} is not an integer"
    elif t is not None:
        assert isinstance(value, types[t]), f"{path}: {value!r} is not {t}"
    if t == "object":
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing required {key!r}"
        for key, item in value.items():
            assert key in props, f"{path}: unexpected key {key!r}"
            validate(item, props[key], f"{path}.{key}")


@pytest.fixture(scope="module")
def tok() -> Any:
    from deltamem_agents.backbone import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def pieces(tok: Any) -> list[str]:
    return tok.convert_ids_to_tokens(list(range(V)))


@pytest.fixture(scope="module")
def closing_bias(pieces: list[str]) -> torch.Tensor:
    """Favour tokens that close strings/objects so random JSON ends within a few hundred steps."""
    return torch.tensor([6.0 if ('"' in p or "}" in p) else 0.0 for p in pieces])


@pytest.fixture(scope="module")
def alpha_ids(pieces: list[str]) -> torch.Tensor:
    return torch.tensor([i for i, p in enumerate(pieces) if re.fullmatch(r"Ġ?[A-Za-z]{2,}", p)])


def sample(c: ToolCallConstraint, g: torch.Generator, bias: torch.Tensor) -> tuple[int, torch.Tensor]:
    logits = torch.randn(V, generator=g) + bias
    masked = c.mask_logits(logits)
    assert masked is logits
    assert torch.isfinite(masked).any()
    tid = int(torch.multinomial(torch.softmax(masked, dim=-1), 1, generator=g))
    return tid, masked


def run_forced(tok: Any, c: ToolCallConstraint, g: torch.Generator, bias: torch.Tensor) -> str:
    ids: list[int] = []
    for _ in range(MAX_STEPS):
        if c.is_finished():
            break
        tid, masked = sample(c, g, bias)
        if tid != EOS:
            ids.append(tid)
        c.accept(tid)
    else:
        pytest.fail(f"not finished after {MAX_STEPS} steps: {tok.decode(ids)!r}")
    masked = c.mask_logits(torch.randn(V, generator=g))
    assert torch.isfinite(masked).nonzero().flatten().tolist() == [EOS]
    return tok.decode(ids)


# ---------------------------------------------------------------- normalize_tools / tool choice / prompt

def test_normalize_three_forms() -> None:
    openai = {"type": "function", "function": {"name": "f", "description": "d", "parameters": WEATHER_SCHEMA}}
    bare = {"name": "f", "description": "d", "parameters": WEATHER_SCHEMA}
    titled = {**WEATHER_SCHEMA, "title": "f", "description": "d"}
    for form in (openai, bare, titled):
        assert normalize_tools([form]) == [{"name": "f", "description": "d", "parameters": WEATHER_SCHEMA}]
    out = normalize_tools([{"name": "g"}, {"type": "function", "function": {"name": "h-2"}}])
    assert out[0] == {"name": "g", "description": "", "parameters": {"type": "object", "properties": {}}}
    assert out[1]["name"] == "h-2"
    assert normalize_tools(out) == out  # idempotent
    assert normalize_tools(None) == []


@pytest.mark.parametrize("tools, match", [
    ([{"name": "bad name"}], "invalid name"),
    ([{"name": ""}], "invalid name"),
    ([{"name": "x" * 65}], "invalid name"),
    ([{"name": 3}], "invalid name"),
    ([{"name": "f", "parameters": {"type": "string"}}], "type 'object'"),
    ([{"name": "f", "parameters": ["a"]}], "type 'object'"),
    ([{"name": "f", "parameters": {"type": "object", "properties": []}}], "properties"),
    ([{"name": "f"}, {"type": "function", "function": {"name": "f"}}], "duplicate"),
    ([{"type": "function"}], "no 'function'"),
    ([{"description": "nameless"}], "no name"),
    (["f"], "must be a dict"),
    ({"name": "f"}, "list"),
])
def test_normalize_rejects(tools: Any, match: str) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        normalize_tools(tools)


def test_tool_choice() -> None:
    tools = normalize_tools(TOOLS)
    assert normalize_tool_choice("auto", tools) == ("auto", None)
    assert normalize_tool_choice(None, tools) == ("auto", None)
    assert normalize_tool_choice("auto", []) == ("none", None)
    assert normalize_tool_choice("none", tools) == ("none", None)
    assert normalize_tool_choice("any", tools) == ("required", None)
    assert normalize_tool_choice("get_time", tools) == ("forced", "get_time")
    assert normalize_tool_choice({"type": "function", "function": {"name": "get_time"}}, tools) == ("forced", "get_time")
    for bad in ("nope", {"type": "function", "function": {}}, 3):
        with pytest.raises(InvalidMessageError):
            normalize_tool_choice(bad, tools)
    with pytest.raises(InvalidMessageError):
        normalize_tool_choice("required", [])


def test_system_text(tok: Any) -> None:
    text = tools_system_text(TOOLS)
    assert "get_weather" in text and "get_time" in text and '"enum": ["celsius", "fahrenheit"]' in text
    assert '<tool_call>\n{"name": "<function-name>", "arguments": {<arguments-json>}}\n</tool_call>' in text
    assert len(tok.encode(text)) < 400
    assert tools_system_text([]) == ""


# ---------------------------------------------------------------- parse_tool_calls

def test_parse_roundtrip_with_template_text() -> None:
    msg = validate_message({"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "a", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
        {"id": "b", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}]})
    content, calls, invalid = parse_tool_calls(template_text(msg))
    assert content == "Let me check." and invalid == []
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "UTC"})]
    assert all(re.fullmatch(r"call_[0-9a-f]{32}", c["id"]) for c in calls)
    assert calls[0]["id"] != calls[1]["id"]


def test_parse_plain_and_single() -> None:
    assert parse_tool_calls("just text\n") == ("just text\n", [], [])
    content, calls, invalid = parse_tool_calls('<tool_call>{"name":"f","arguments":{"a":[1,2]}}</tool_call>')
    assert content == "" and invalid == [] and calls[0]["name"] == "f" and calls[0]["arguments"] == {"a": [1, 2]}
    _, calls, _ = parse_tool_calls('<tool_call>\n{"name": "f"}\n</tool_call>')
    assert calls[0]["arguments"] == {}
    _, calls, _ = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>')
    assert calls[0]["arguments"] == {"x": 1}


@pytest.mark.parametrize("block, name, error", [
    ('{"name": "f", "arguments": {"a": }', "f", "invalid JSON"),
    ("", None, "invalid JSON"),
    ('{"name": "f", "arguments": {"a": NaN}}', "f", "invalid JSON"),
    ('["f", {}]', None, "expected a JSON object"),
    ('{"arguments": {}}', None, "function name"),
    ('{"name": "bad name", "arguments": {}}', "bad name", "function name"),
    ('{"name": "f", "arguments": [1]}', "f", "must be a JSON object"),
    ('{"name": "f", "arguments": "nope"}', "f", "arguments string"),
    ('{"name": "f", "arguments": {}, "extra": 1}', "f", "unexpected keys"),
    ("[" * 100_000 + "]" * 100_000, None, "invalid JSON"),
])
def test_parse_invalid(block: str, name: str | None, error: str) -> None:
    content, calls, invalid = parse_tool_calls(f"hi <tool_call>{block}</tool_call>")
    assert content == "hi" and calls == []
    assert len(invalid) == 1 and invalid[0]["name"] == name and error in invalid[0]["error"]
    assert invalid[0]["arguments"] == block.strip() and invalid[0]["id"].startswith("call_")


def test_parse_unterminated_and_mixed() -> None:
    good = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    text = f'pre\n{good}\n<tool_call>\n{{"name": "g", "arguments": {{"x": 1'
    content, calls, invalid = parse_tool_calls(text)
    assert content == "pre" and [c["name"] for c in calls] == ["f"]
    assert invalid[0]["name"] == "g" and "unterminated" in invalid[0]["error"]
    content, calls, invalid = parse_tool_calls(f"<tool_call> junk {good}")
    assert [c["name"] for c in calls] == ["f"] and len(invalid) == 1 and invalid[0]["arguments"] == "junk"
    _, calls, invalid = parse_tool_calls(good, tool_names=["g"])
    assert calls == [] and "unknown tool" in invalid[0]["error"]


FRAGMENTS = ["<tool_call>", "</tool_call>", "\n", "{", "}", '"name"', ":", '"f"', ",", '"arguments"', "[", "]",
             '"', "\\", "NaN", "1e999", "9" * 5000, "<tool_", "call>"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)), max_size=30).map("".join))
def test_parse_fuzz_never_raises(text: str) -> None:
    content, calls, invalid = parse_tool_calls(text)
    assert isinstance(content, str) and text.startswith(content)
    assert len(calls) + len(invalid) == text.count("<tool_call>")
    for c in calls:
        assert isinstance(c["name"], str) and isinstance(c["arguments"], dict)
        json.dumps(c["arguments"])  # serializable, as template_text needs
    for c in invalid:
        assert isinstance(c["arguments"], str) and c["error"] and (c["name"] is None or isinstance(c["name"], str))


# ---------------------------------------------------------------- ToolCallConstraint

@pytest.mark.parametrize("seed", range(5))
def test_forced_tool_random_logits(tok: Any, closing_bias: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    choice = "get_weather" if seed % 2 else {"type": "function", "function": {"name": "get_weather"}}
    c = ToolCallConstraint(tok, TOOLS, choice, vocab_size=V, eos_token_id=EOS)
    text = run_forced(tok, c, g, closing_bias)
    content, calls, invalid = parse_tool_calls(text, tool_names=SCHEMAS)
    assert content == "" and invalid == [] and len(calls) == 1, text
    assert calls[0]["name"] == "get_weather"
    validate(calls[0]["arguments"], WEATHER_SCHEMA)
    assert text.startswith('<tool_call>\n{"name": "get_weather", "arguments": {') and text.endswith("}\n</tool_call>")


@pytest.mark.parametrize("seed", range(5))
def test_required_random_logits(tok: Any, closing_bias: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    c = ToolCallConstraint(tok, TOOLS, "required" if seed % 2 else "any", vocab_size=V, eos_token_id=EOS)
    first = c.mask_logits(torch.zeros(V))
    assert not torch.isfinite(first[EOS])  # at least one call
    bias = closing_bias.clone()
    bias[EOS] += 4.0  # after each call: end of turn or "\n<tool_call>..." for another one
    text = run_forced(tok, c, g, bias)
    content, calls, invalid = parse_tool_calls(text, tool_names=SCHEMAS)
    assert content == "" and invalid == [] and calls, text
    assert text.count("<tool_call>") == len(calls)
    for call in calls:
        validate(call["arguments"], SCHEMAS[call["name"]])


@pytest.mark.parametrize("seed", range(5))
def test_auto_free_text_then_constrained_call(tok: Any, closing_bias: torch.Tensor, alpha_ids: torch.Tensor,
                                              seed: int) -> None:
    g = torch.Generator().manual_seed(200 + seed)
    c = ToolCallConstraint(tok, TOOLS, "auto", vocab_size=V, eos_token_id=EOS)
    text_bias = torch.zeros(V)
    text_bias[alpha_ids] = 12.0
    ids: list[int] = []
    for _ in range(12):  # plain text: the mask changes nothing, end-of-turn is allowed
        tid, masked = sample(c, g, text_bias)
        assert bool(torch.isfinite(masked).all()) and not c.is_finished()
        ids.append(tid)
        c.accept(tid)
    plain = tok.decode(ids)
    trigger = tok.encode("\n<tool_call>\n")
    for tid in trigger:
        c.accept(tid)
    ids += trigger
    allowed = torch.isfinite(c.mask_logits(torch.zeros(V))).nonzero().flatten().tolist()
    assert sorted(tok.decode([i]) for i in allowed) == ["{", '{"']
    start = len(ids)
    for _ in range(MAX_STEPS):
        tid, masked = sample(c, g, closing_bias)
        assert not torch.isfinite(masked[EOS])  # no end of turn inside a block
        ids.append(tid)
        c.accept(tid)
        if "</tool_call>" in tok.decode(ids[start:]):
            break
    else:
        pytest.fail("tool-call block did not close")
    assert torch.isfinite(c.mask_logits(torch.zeros(V))).all()  # free text again after the block
    c.accept(EOS)
    assert c.is_finished()
    assert torch.isfinite(c.mask_logits(torch.zeros(V))).nonzero().flatten().tolist() == [EOS]
    content, calls, invalid = parse_tool_calls(tok.decode(ids), tool_names=SCHEMAS)
    assert content == plain.rstrip() and invalid == [] and len(calls) == 1
    validate(calls[0]["arguments"], SCHEMAS[calls[0]["name"]])


def test_auto_restricts_names(tok: Any) -> None:
    c = ToolCallConstraint(tok, TOOLS, "auto", vocab_size=V, eos_token_id=EOS)
    for tid in tok.encode('Sure.\n<tool_call>\n{"name": "'):
        c.accept(tid)
    allowed = torch.isfinite(c.mask_logits(torch.zeros(V))).nonzero().flatten().tolist()
    tails = [n + '", "arguments": {' for n in SCHEMAS]
    assert allowed and all(any(t.startswith(tok.decode([i])) for t in tails) for i in allowed)
    with pytest.raises(InvalidMessageError, match="not allowed"):
        c.accept(tok.encode("set")[0])
    c.reset()
    assert torch.isfinite(c.mask_logits(torch.zeros(V))).all()


def test_forced_rejects_text_and_none_is_free(tok: Any) -> None:
    c = ToolCallConstraint(tok, TOOLS, "get_time", vocab_size=V, eos_token_id=EOS)
    with pytest.raises(DeltaMemError):
        c.accept(tok.encode("Hello")[0])
    n = ToolCallConstraint(tok, TOOLS, "none", vocab_size=V, eos_token_id=EOS)
    assert torch.isfinite(n.mask_logits(torch.zeros(V))).all() and not n.is_finished()
    n.accept(tok.encode("Hello")[0])
    n.accept(EOS)
    assert n.is_finished()
    assert torch.isfinite(n.mask_logits(torch.zeros(V))).nonzero().flatten().tolist() == [EOS]


def test_grammar_cache_and_padded_vocab(tok: Any) -> None:
    ToolCallConstraint(tok, TOOLS, "required", vocab_size=V, eos_token_id=EOS)
    size = len(grammar_mod._grammars)
    c = ToolCallConstraint(tok, list(TOOLS), "required", vocab_size=V, eos_token_id=EOS)
    assert len(grammar_mod._grammars) == size  # cache hit
    padded = ToolCallConstraint(tok, TOOLS, "auto", vocab_size=V + 64, eos_token_id=[EOS])
    logits = padded.mask_logits(torch.zeros(V + 64))
    assert torch.isfinite(logits[:V]).all() and not torch.isfinite(logits[V:]).any()
    assert not c.is_finished()
    with pytest.raises(ValueError):
        ToolCallConstraint(tok, TOOLS, "auto", vocab_size=V, eos_token_id=V)


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_single_call_when_not_parallel(tok: Any, choice: str) -> None:
    c = ToolCallConstraint(tok, TOOLS, choice, vocab_size=V, eos_token_id=EOS, parallel_tool_calls=False)
    for tid in tok.encode('<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'):
        assert not c.is_finished()
        assert torch.isfinite(c.mask_logits(torch.zeros(V))[tid])
        c.accept(tid)
    assert c.is_finished()  # no second call, no trailing text: only end of turn
    assert torch.isfinite(c.mask_logits(torch.zeros(V))).nonzero().flatten().tolist() == [EOS]
