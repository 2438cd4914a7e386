"""The LoRA control: same backbone, same trainable-parameter budget, same episodes, no state.

A plain LoRA (peft) on q_proj/o_proj is trained on exactly the episodes the δ-mem trainer samples
(same sampler, seed, steps, counterfactual twins), but sees only what the runtime shows in the prompt:
the final window + question, loss on the answer. Whatever it learns is prior/format, not memory, so a
δ-mem gain counts only where it beats this control as well as the shuffled-state control.
Rank 12 on q_proj+o_proj of SmolLM2-135M = 829,440 parameters vs δ-mem rank 8 = 829,680.

With `preserve_weight` / `chat_frac` it is held to the δ-mem trainer's preservation terms (train/preserve.py):
KL(backbone ‖ LoRA) on the final pass's non-answer tokens, and chat-ending episodes (the same draw, seeded as
the δ-mem trainer seeds it) trained on that KL alone, reply included. Without them the control is free to
become a terse task fine-tune that breaks ordinary replies (measured: docs/research-log.md §12), which is not a
fair comparison for an adapter that is held to them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deltamem_agents.datasets.counterfactual import counterfactual, supports_counterfactual
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.train.checkpoint import load_moments, save_training_state
from deltamem_agents.runtime.replay import IGNORE, EpisodePasses, build_passes
from deltamem_agents.train.preserve import chat_draw, chat_ending, kl_from, preserve_positions
from deltamem_agents.datasets.sampler import EpisodeSampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoRAControlConfig:
    out_dir: str = "runs/lora-control"
    steps: int = 300
    grad_accum: int = 4
    lr: float = 1e-3
    warmup_frac: float = 0.05
    lr_schedule: str = "cosine"  # as TrainConfig.lr_schedule
    max_grad_norm: float = 1.0  # 0 = no clipping (as the δ-mem trainer)
    seed: int = 0
    rank: int = 12
    alpha: float = 24.0
    target_modules: tuple[str, ...] = ("q_proj", "o_proj")
    counterfactual: bool = True
    bf16: bool = True
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    sampler: dict[str, Any] = field(default_factory=dict)
    ckpt_every_min: float = 10.0
    max_minutes: float | None = None
    keep_steps: tuple[int, ...] = ()  # also keep a copy of the checkpoint at these steps (checkpoint-step<N>/)
    # the δ-mem trainer's preservation terms (TrainConfig.preserve_weight / chat_frac), teacher = LoRA disabled
    preserve_weight: float = 0.0
    chat_frac: float = 0.0


def lora_model(model: Any, cfg: LoRAControlConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    pcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(cfg.target_modules))
    return get_peft_model(model, pcfg)


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def read_logits(model: Any, read_ids: list[int]) -> torch.Tensor:
    """The model's [T, V] logits over one episode's read pass."""
    dev = next(model.parameters()).device
    return model(input_ids=torch.tensor([read_ids], device=dev), use_cache=False).logits[0]


def answer_loss(model: Any, read_ids: list[int], labels: list[int],
                logits_out: list[torch.Tensor] | None = None) -> torch.Tensor:
    logits = read_logits(model, read_ids)
    if logits_out is not None:
        logits_out.append(logits)
    lab = torch.tensor(labels, device=logits.device)
    pos = (lab[1:] != IGNORE).nonzero().squeeze(-1)
    if pos.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits[pos].float(), lab[1:][pos])


def lora_preserve_kl(model: Any, p: EpisodePasses, logits: torch.Tensor, include_answer: bool = False) -> torch.Tensor:
    """KL(backbone ‖ LoRA) at the positions train/preserve.py preserves; the teacher is the peft model with its
    adapters disabled (= the frozen backbone), `logits` the LoRA model's [T, V] logits of the same pass."""
    pos = preserve_positions(p, include_answer)
    if pos.numel() == 0:
        return logits.sum() * 0.0
    dev = logits.device
    with torch.no_grad(), model.disable_adapter():
        teacher = model(input_ids=torch.tensor([p.read_ids], device=dev), use_cache=False).logits[0, pos.to(dev)]
    return kl_from(F.log_softmax(teacher.float(), dim=-1), logits[pos.to(dev)])


class LoRAControlTrainer:
    def __init__(self, model: Any, tokenizer: Any, cfg: LoRAControlConfig) -> None:
        from deltamem_agents.train.trainer import TrainConfig

        self.cfg = cfg
        if cfg.chat_frac and not cfg.preserve_weight:
            raise ValueError("chat_frac > 0 trains chat-ending episodes on the preservation KL only: set preserve_weight")
        if cfg.bf16:
            model.to(torch.bfloat16)
        self.model = lora_model(model, cfg)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        assert self.params and all("lora_" in n for n in self.params), "only LoRA weights may train"
        self.renderer = ChatRenderer(tokenizer, cfg.system_prompt)
        self.sampler = EpisodeSampler(tokenizer, seed=cfg.seed, total_steps=cfg.steps, **cfg.sampler)
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, weight_decay=0.0)
        self._sched = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_frac=cfg.warmup_frac, lr_schedule=cfg.lr_schedule)
        self.out = Path(cfg.out_dir)
        self.step, self.wall = 0, 0.0
        self._calls = 0  # episodes drawn in this step (seeds the chat-ending draw as the δ-mem trainer does)
        self._kls: list[float] = []
        ckpt = self.out / "checkpoint-last"
        if ckpt.is_dir():
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
            st = load_moments(ckpt, self.params, self.opt)
            self.step, self.wall = st["step"], st["wall_seconds"]
            logger.info("resumed LoRA control from %s at step %d", ckpt, self.step)

    def _micro_loss(self, step: int, micro: int) -> tuple[torch.Tensor, int, float | None]:
        """(loss, read tokens, answer CE or None for a chat ending) of one micro-batch episode."""
        ep, policy = self.sampler.sample(step, micro)
        if self.cfg.chat_frac:
            rng = chat_draw(self.cfg.seed, step, self._calls, self.cfg.chat_frac)  # = Trainer._episode_loss's draw
            self._calls += 1
            if rng is not None:
                p = build_passes(chat_ending(ep, rng), self.renderer, policy)
                kl = lora_preserve_kl(self.model, p, read_logits(self.model, p.read_ids), include_answer=True)
                return self.cfg.preserve_weight * kl, len(p.read_ids), None
        eps = [ep]
        if self.cfg.counterfactual and supports_counterfactual(ep):
            eps.append(counterfactual(ep, int(ep.meta.get("seed", 0))))  # the δ-mem trainer's twin
        losses, aux, tokens = [], [], 0
        for e in eps:
            p = build_passes(e, self.renderer, policy)
            logits = [] if self.cfg.preserve_weight else None
            losses.append(answer_loss(self.model, p.read_ids, p.labels, logits))
            if logits:
                kl = lora_preserve_kl(self.model, p, logits[0])
                self._kls.append(kl.item())
                aux.append(self.cfg.preserve_weight * kl)
            tokens += len(p.read_ids)
        ce = torch.stack(losses).mean()
        return ce + (torch.stack(aux).mean() if aux else 0.0), tokens, ce.item()

    def train(self) -> None:
        from tqdm.auto import tqdm

        from deltamem_agents.train.trainer import lr_at

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "lora_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        log = (self.out / "log.jsonl").open("a")
        t_start = last = time.monotonic()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train LoRA control", dynamic_ncols=True)
        self.model.train()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            lr = lr_at(self.step, self._sched)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            self._calls, self._kls = 0, []
            total, tokens, ces = 0.0, 0, []
            for micro in range(cfg.grad_accum):
                loss, n, ce = self._micro_loss(self.step, micro)
                (loss / cfg.grad_accum).backward()
                total, tokens = total + loss.item() / cfg.grad_accum, tokens + n
                if ce is not None:
                    ces.append(ce)
            clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), clip).item()
            self.opt.step()
            self.step += 1
            self.wall += time.perf_counter() - t0
            log.write(json.dumps({"step": self.step, "lr": lr, "loss": total, "grad_norm": gnorm, "tokens": tokens,
                                  "answer_ce": sum(ces) / len(ces) if ces else None,
                                  "preserve_kl": sum(self._kls) / len(self._kls) if self._kls else None,
                                  "wall_seconds": self.wall}) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}")
            out_of_time = cfg.max_minutes is not None and time.monotonic() - t_start > 60 * cfg.max_minutes
            keep = self.step in cfg.keep_steps
            if self.step >= cfg.steps or out_of_time or keep or time.monotonic() - last > 60 * cfg.ckpt_every_min:
                ckpt = self.save()
                last = time.monotonic()
                if keep:
                    shutil.copytree(ckpt, self.out / f"checkpoint-step{self.step}", dirs_exist_ok=True)
            if out_of_time:
                break
        bar.close()
        log.close()

    def save(self) -> Path:
        return save_training_state(self.out, self.params, self.opt, {"step": self.step, "wall_seconds": self.wall},
                                   lambda d: self.model.save_pretrained(str(d), safe_serialization=True))
