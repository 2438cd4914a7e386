"""`DeltaMemCheckpointer`: a LangGraph checkpointer whose thread deletion also forgets the δ-memory.

    from langgraph.checkpoint.sqlite import SqliteSaver
    saver = DeltaMemCheckpointer(SqliteSaver(conn), llm)       # llm: a ChatDeltaMem (or several)
    agent = create_agent(llm, tools, checkpointer=saver)
    ...
    saver.delete_thread("alice")      # the graph's checkpoints *and* the thread's δ-session are gone

Everything else is delegated to the wrapped saver unchanged (same serializer, same storage). The graph's
checkpoints hold the message history; the δ-state lives in the deltamem session store (SQLite), so both
survive a restart when both are on disk. ``copy_thread`` forks the δ-session too. Only models routed by
``thread_id`` (``session_key="thread_id"``, the default) are touched: a memory keyed by user outlives threads.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple

from .chat_models import ChatDeltaMem

__all__ = ["DeltaMemCheckpointer"]


class DeltaMemCheckpointer(BaseCheckpointSaver):
    def __init__(self, saver: BaseCheckpointSaver, *models: ChatDeltaMem) -> None:
        if not isinstance(saver, BaseCheckpointSaver):
            raise TypeError(f"saver must be a BaseCheckpointSaver, not {type(saver).__name__}")
        super().__init__(serde=saver.serde)
        self.saver = saver
        self.models = [m for m in models if isinstance(m, ChatDeltaMem)]
        if len(self.models) != len(models):
            raise TypeError("models must be ChatDeltaMem instances")

    def _routed(self) -> list[ChatDeltaMem]:
        return [m for m in self.models if m.use_memory and m.session_key == "thread_id" and m.session_id is None]

    def forget_thread(self, thread_id: str) -> None:
        for m in self._routed():
            m.forget_thread(thread_id)

    # ---- deletion / copy: the checkpoints and the δ-session together
    def delete_thread(self, thread_id: str) -> None:
        self.saver.delete_thread(thread_id)
        self.forget_thread(thread_id)

    async def adelete_thread(self, thread_id: str) -> None:
        await self.saver.adelete_thread(thread_id)
        await asyncio.to_thread(self.forget_thread, thread_id)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.saver.copy_thread(source_thread_id, target_thread_id)
        for m in self._routed():
            if m.session_for(source_thread_id) in m.threads():
                m.fork_thread(source_thread_id, target_thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self.saver.acopy_thread(source_thread_id, target_thread_id)
        for m in self._routed():
            if m.session_for(source_thread_id) in m.threads():
                await asyncio.to_thread(m.fork_thread, source_thread_id, target_thread_id)

    # ---- plain delegation
    @property
    def config_specs(self) -> list:
        return self.saver.config_specs

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.saver.get_tuple(config)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        return self.saver.list(config, filter=filter, before=before, limit=limit)

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        return self.saver.put(config, checkpoint, metadata, new_versions)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        return self.saver.put_writes(config, writes, task_id, task_path)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        return self.saver.delete_for_runs(run_ids)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        return self.saver.prune(thread_ids, strategy=strategy)

    def get_next_version(self, current: Any, channel: Any) -> Any:
        return self.saver.get_next_version(current, channel)

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]) -> Mapping[str, Any]:
        return self.saver.get_delta_channel_history(config=config, channels=channels)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self.saver.aget_tuple(config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        async for item in self.saver.alist(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await self.saver.aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        return await self.saver.aput_writes(config, writes, task_id, task_path)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        return await self.saver.adelete_for_runs(run_ids)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        return await self.saver.aprune(thread_ids, strategy=strategy)

    async def aget_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]
                                         ) -> Mapping[str, Any]:
        return await self.saver.aget_delta_channel_history(config=config, channels=channels)

    def __getattr__(self, name: str) -> Any:  # setup(), conn, ... of the wrapped saver
        if name == "saver":
            raise AttributeError(name)
        return getattr(self.saver, name)
