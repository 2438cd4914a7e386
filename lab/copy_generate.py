"""Batched greedy decoding for the copy read path's free-form evaluation and the backbone's ceiling.

Prompts are left-padded into one batch (explicit position ids, padding masked), so a batch of 32 replies costs about
as many forwards as one. With a copy head and a state per row, every step's logits get the head's read
(`lab.openset_copyhead.CopyHead`): lm_head(h) + Ê·u, u = `head.scaled_read`(h, S·norm(W_q h)). Without a head it is
the plain backbone, as the ceiling (the fact right before the question) needs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deltamem_agents.core.copy import embedding_norms, tied_logits


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], eos: int, max_new: int = 24, head=None,
                   S: torch.Tensor | None = None, topk: int = 0, coverage: float = 0.0) -> tuple[list[list[int]], list]:
    """Greedy replies (token ids, without the end token) for each prompt; with `topk` > 0 also, per row and per
    emitted position (the end token included), the top-k (log-probs, ids) of the distribution it was chosen from.
    `coverage` > 0: after a row emits token x, its (reply-local) state loses that share of x's value direction,
    S ← (I − c·ê(x)ê(x)ᵀ) S, so a copied token is not read back again and again."""
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, h = out.past_key_values, out.last_hidden_state[:, -1].float()
    cur = torch.tensor([p[-1] for p in prompts])  # the token at the reading position (token queries)
    done = [False] * B
    res: list[list[int]] = [[] for _ in range(B)]
    dist: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(B)]
    for _ in range(max_new):
        if head is None:
            logits = model.lm_head(h.to(model.lm_head.weight.dtype)).float()
        else:
            q = head.queries(h, cur)
            u = head.scaled_read(h, torch.einsum("bdr,br->bd", S, q))
            logits = _logits_with_read(model, head, h, u)
        nxt = logits.argmax(-1)
        cur = nxt
        if head is not None and coverage:
            e = head.E[nxt]  # [B, d]
            S = S - coverage * e[:, :, None] * torch.einsum("bd,bdr->br", e, S)[:, None, :]
        if topk:
            lp = logits.log_softmax(-1).topk(topk, dim=-1)
        for b in range(B):
            if done[b]:
                continue
            if topk:
                dist[b].append((lp.values[b].clone(), lp.indices[b].clone()))
            if int(nxt[b]) == eos:
                done[b] = True
            else:
                res[b].append(int(nxt[b]))
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
        pos = pos[:, -1:] + 1
        out = model.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=past,
                          use_cache=True)
        past, h = out.past_key_values, out.last_hidden_state[:, -1].float()
    return res, dist


def _logits_with_read(model, head, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """lm_head(h) + Ê·u; for a tied fp32 head one pass over E (the product's `core.copy.tied_logits`)."""
    W = model.lm_head.weight
    if W.data_ptr() == model.get_input_embeddings().weight.data_ptr() and W.dtype == torch.float32:
        return tied_logits(W, model.lm_head.bias, embedding_norms(W), h[:, None], u[:, None])[:, 0]
    return model.lm_head(h.to(W.dtype)).float() + u @ head.E.T
