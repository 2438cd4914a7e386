"""Conversations on a loaded δ-mem model: one δ-state, message log and KV cache per session.

render.py (chat template -> tokens with message ids), window.py (which messages stay visible), session.py (a turn:
write new tokens once, read the window, decode), decode.py (the engine), store*.py (sessions in memory, SQLite),
tools.py / grammar.py (tool calls, constrained decoding), replay.py (an episode as the forward passes the runtime
would run, shared with the trainer and the benchmark).
"""
