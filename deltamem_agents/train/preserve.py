"""Preservation: with a δ-state present, text that does not need the memory is predicted as the frozen
backbone predicts it.

An adapter trained only on the answer loss of fact questions learns a *style* as well as a memory: with any
non-empty state its corrections turn every reply terse ("How long should I boil an egg?" -> "1."), which the
answer loss and the shuffled-state control cannot see. The preservation term is the
KL divergence KL(backbone ‖ δ-mem) of the next-token distributions on the final pass's tokens that are not
the answer (system prompt, the window's messages, the question and the reply header): the frozen backbone
(δ-mem disabled, no gradient) is the teacher. The answer positions are left to the answer loss, so the state
may change exactly what the memory is for.

Chat-ending episodes (`TrainConfig.chat_frac`) end the same fact-bearing history with a chit-chat question
instead of the fact question; their whole final pass, reply included, is preserved: a state full of facts
must not change how the model answers a question that is not about them.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch
import torch.nn.functional as F

from ..datasets.distractors import distractor, faker_for
from ..datasets.episode import Episode
from ..patching.context import disabled
from ..runtime.replay import IGNORE, EpisodePasses
from ..datasets.episode import fact_values


def chat_draw(seed: int, step: int, call: int, frac: float) -> random.Random | None:
    """Whether the `call`-th episode of `step` ends in chit-chat (with probability `frac`): the generator that picks
    the chit-chat if it does, else None. The δ-mem trainer and the LoRA control share it, so both see the same
    chat-ending episodes."""
    rng = random.Random(f"chat:{seed}:{step}:{call}")
    return rng if rng.random() < frac else None


def chat_ending(ep: Episode, rng: random.Random) -> Episode:
    """The episode's history (a state full of facts) ending in a chit-chat exchange instead of its question."""
    q, a = distractor(rng, faker_for(rng.getrandbits(32)), fact_values(ep))
    return dataclasses.replace(ep, question=q, answer=a)


def preserve_positions(p: EpisodePasses, include_answer: bool = False) -> torch.Tensor:
    """Positions t of the final pass whose next token (t+1) is not an answer token (every position but the
    last with `include_answer`: a chat-ending episode, whose reply the backbone should write as it would)."""
    if include_answer:
        return torch.arange(len(p.read_ids) - 1)
    labels = torch.tensor(p.labels)
    return (labels[1:] == IGNORE).nonzero().squeeze(-1)


@torch.no_grad()
def backbone_logprobs(model: Any, p: EpisodePasses, pos: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's next-token log-probabilities at `pos` of the final pass (δ-mem off)."""
    dev = model.lm_head.weight.device
    with disabled():
        hidden = model.model(input_ids=torch.tensor([p.read_ids], device=dev), use_cache=False).last_hidden_state[0]
    return F.log_softmax(model.lm_head(hidden[pos.to(dev)]).float(), dim=-1)


def preserve_kl(model: Any, p: EpisodePasses, hidden: torch.Tensor, include_answer: bool = False) -> torch.Tensor:
    """Mean over non-answer positions (all positions with `include_answer`) of KL(backbone ‖ δ-mem); `hidden` is
    the final pass's last hidden state [T, d] under the δ-state (with its graph when training)."""
    pos = preserve_positions(p, include_answer)
    if pos.numel() == 0:
        return hidden.sum() * 0.0
    return kl_from(backbone_logprobs(model, p, pos), model.lm_head(hidden[pos.to(hidden.device)]))


def kl_from(teacher_logprobs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student): teacher log-probabilities and student logits, both [N, V]."""
    return F.kl_div(F.log_softmax(student_logits.float(), dim=-1), teacher_logprobs, log_target=True,
                    reduction="batchmean")
