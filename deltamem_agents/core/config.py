"""δ-mem configuration: a frozen, validated dataclass with a versioned JSON form.

Defaults follow the spec (`deltamem-algorithm.md`, section 14): rank 8, α 16, rank-wise gates with bias −1.5,
tanh+L2-normalised q/k, standard coupled update, corrections on q and o, `base_slice_fixed` init, all layers.
Presets: `tsw()` (token writes), `ssw()` (one write per chat message, the message mean), `msw()` (4 state heads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

FORMAT_VERSION = 3  # 2: copy_rank (written only when > 0, so a config without a copy channel reads as version 1)
# and copy_gate / copy_gate_hidden (written only with a message gate); 3: copy_tok_rank (written only when > 0, so a
# copy channel without token keys reads as version 2)

GRANULARITIES = ("token", "message_mean")
UPDATE_MODES = ("standard", "lambda_outside", "no_lambda")
OUTPUT_INITS = ("zero", "random", "base_slice", "base_slice_fixed")
COPY_GATES = ("token", "message")  # the copy channel's write gates (core/copy.py)
DELTA_HEADS = ("q", "o")  # k/v corrections would enter the KV cache; the paper's released runs use q,o only


@dataclass(frozen=True)
class DeltaMemConfig:
    rank: int = 8
    alpha: float = 16.0
    num_state_heads: int = 1
    write_granularity: str = "token"
    beta_bias_init: float = -1.5
    rankwise_gates: bool = True
    normalize_qk: bool = True
    state_update_mode: str = "standard"
    delta_heads: tuple[str, ...] = ("q", "o")
    output_init: str = "base_slice_fixed"
    base_slice_ref_width: int = 8
    online_gain: float = 0.05
    target_layers: tuple[int, ...] = ()  # () = every decoder layer
    write_system: bool = False  # write system-prompt tokens into the state (docs/design.md, section 3: off)
    # subtract a fixed per-layer mean of the layer input (a buffer calibrated once on training text) before the
    # memory projections (q̂, k̂, v, β); off = the spec. docs/design.md, deviation 13, has the measurement
    center_inputs: bool = False
    # selective token writes: a token whose mean write gate β̄ (over heads and ranks) is below this threshold is
    # not written at all (keep 1, erase 0, write 0), so unselected tokens cannot erode the state; 0 = the spec.
    # docs/design.md, deviation 15, has the measurement (oracle writes carry a fact, learned dense writes do not)
    write_threshold: float = 0.0
    # a state-independent low-rank task path beside the state path (0 = off, the spec): per wrapped layer
    # q += (α_t/r_t)·U_q D_q x and o += (α_t/r_t)·U_o D_o a, i.e. a LoRA on q_proj/o_proj trained jointly with the
    # memory, so answer format/priors can live in it instead of in the state read-out (docs/design.md, deviation 17).
    # It is identical for every state, so the shuffled-state control still isolates what the state's content adds
    task_rank: int = 0
    task_alpha: float = 24.0
    # the copy channel (core/copy.py): one d×r delta-rule state per session at the top of the model whose values
    # are token embeddings, read into the logits; r = copy_rank key dimensions, 0 = no copy channel (the spec).
    # docs/design.md, "The copy channel", has what it stores and costs
    copy_rank: int = 0
    # the copy channel's write gate: "token" = a linear function of the hidden state before the token, "message"
    # = an MLP (copy_gate_hidden wide) that also sees the token's own hidden state and its message's mean
    # (core/copy.py). Written to the config file only for "message", so token-gate files read as before
    copy_gate: str = "token"
    copy_gate_hidden: int = 256
    # token keys for the copy channel: copy_tok_rank more key dimensions from the embedding of the token *before*
    # the written one (queries: of the token at the reading position), so the tokens of a number or an id are told
    # apart by what precedes them; 0 = keys from hidden states only (core/copy.py)
    copy_tok_rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form notes, not used by the math

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"invalid DeltaMemConfig: {msg}")

        if not isinstance(self.rank, int) or self.rank < 1 or self.rank > 256:
            bad(f"rank must be an int in [1, 256], got {self.rank!r}")
        if not isinstance(self.num_state_heads, int) or not 1 <= self.num_state_heads <= 64:
            bad(f"num_state_heads must be an int in [1, 64], got {self.num_state_heads!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            bad(f"alpha must be > 0, got {self.alpha!r}")
        if self.write_granularity not in GRANULARITIES:
            bad(f"write_granularity must be one of {GRANULARITIES}, got {self.write_granularity!r}")
        if self.state_update_mode not in UPDATE_MODES:
            bad(f"state_update_mode must be one of {UPDATE_MODES}, got {self.state_update_mode!r}")
        if self.output_init not in OUTPUT_INITS:
            bad(f"output_init must be one of {OUTPUT_INITS}, got {self.output_init!r}")
        heads = tuple(self.delta_heads)
        if not heads or len(set(heads)) != len(heads) or any(h not in DELTA_HEADS for h in heads):
            bad(f"delta_heads must be a non-empty subset of {DELTA_HEADS}, got {self.delta_heads!r}")
        if any(not isinstance(i, int) or i < 0 for i in self.target_layers):
            bad(f"target_layers must be non-negative ints, got {self.target_layers!r}")
        if not (isinstance(self.write_threshold, (int, float)) and 0.0 <= self.write_threshold < 1.0):
            bad(f"write_threshold must be in [0, 1), got {self.write_threshold!r}")
        if self.write_threshold > 0 and self.write_granularity != "token":
            bad("write_threshold applies to token writes (write_granularity='token') only")
        if not isinstance(self.task_rank, int) or not 0 <= self.task_rank <= 256:
            bad(f"task_rank must be an int in [0, 256], got {self.task_rank!r}")
        if not (isinstance(self.task_alpha, (int, float)) and self.task_alpha > 0):
            bad(f"task_alpha must be > 0, got {self.task_alpha!r}")
        if isinstance(self.copy_rank, bool) or not isinstance(self.copy_rank, int) or not 0 <= self.copy_rank <= 4096:
            bad(f"copy_rank must be an int in [0, 4096], got {self.copy_rank!r}")
        if self.copy_gate not in COPY_GATES:
            bad(f"copy_gate must be one of {COPY_GATES}, got {self.copy_gate!r}")
        if self.copy_gate != "token" and not self.copy_rank:
            bad(f"copy_gate={self.copy_gate!r} needs a copy channel (copy_rank > 0)")
        if isinstance(self.copy_gate_hidden, bool) or not isinstance(self.copy_gate_hidden, int) \
                or not 1 <= self.copy_gate_hidden <= 65536:
            bad(f"copy_gate_hidden must be an int in [1, 65536], got {self.copy_gate_hidden!r}")
        if self.copy_gate == "token" and self.copy_gate_hidden != 256:
            bad("copy_gate_hidden applies to the message gate (copy_gate='message') only")
        if isinstance(self.copy_tok_rank, bool) or not isinstance(self.copy_tok_rank, int) \
                or not 0 <= self.copy_tok_rank <= 4096:
            bad(f"copy_tok_rank must be an int in [0, 4096], got {self.copy_tok_rank!r}")
        if self.copy_tok_rank and not self.copy_rank:
            bad("copy_tok_rank needs a copy channel (copy_rank > 0)")
        if self.online_gain < 0 or self.base_slice_ref_width < 1:
            bad("online_gain must be >= 0 and base_slice_ref_width >= 1")
        object.__setattr__(self, "delta_heads", heads)
        object.__setattr__(self, "target_layers", tuple(sorted(set(self.target_layers))))

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def scaling(self) -> float:
        """s = α / r (uses rank, not H·r, as the reference code does)."""
        return float(self.alpha) / self.rank

    @property
    def task_scaling(self) -> float:
        """α_t / r_t of the task path (0 without one)."""
        return float(self.task_alpha) / self.task_rank if self.task_rank else 0.0

    @property
    def read_dim(self) -> int:
        """R = H·r, the length of a layer's read vector."""
        return self.rank * self.num_state_heads

    @property
    def num_gates(self) -> int:
        """G = H·r with rank-wise gates, else H."""
        return self.read_dim if self.rankwise_gates else self.num_state_heads

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta_heads"] = list(self.delta_heads)
        d["target_layers"] = list(self.target_layers)
        if self.copy_gate == "token":  # the token gate's files keep their form, key for key
            del d["copy_gate"], d["copy_gate_hidden"]
        if self.copy_tok_rank:
            d["format_version"] = FORMAT_VERSION
        elif self.copy_rank:  # the version-2 form: readers without token keys still load it
            del d["copy_tok_rank"]
            d["format_version"] = 2
        else:  # the version-1 form, key for key: older readers still load it
            del d["copy_rank"], d["copy_tok_rank"]
            d["format_version"] = 1
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeltaMemConfig:
        d = dict(d)
        version = d.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"DeltaMemConfig format_version {version} is newer than supported ({FORMAT_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DeltaMemConfig keys: {sorted(unknown)}")
        for key in ("delta_heads", "target_layers"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def replace(self, **changes: Any) -> DeltaMemConfig:
        return DeltaMemConfig.from_dict({**self.to_dict(), **changes})


def parse_layer_spec(spec: str) -> tuple[int, ...]:
    """Layer ids from "10-19,25" (ranges inclusive, sorted, no duplicates); "" -> () (all layers)."""
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"bad layer spec {spec!r}: {part!r} is not a layer id or a range like 10-19") from None
        if a < 0 or b < a:
            raise ValueError(f"bad layer spec {spec!r}: range {part!r} is empty or negative")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def tsw(**kw: Any) -> DeltaMemConfig:
    """Token-State Write: one delta-rule step per token (the paper's default)."""
    return DeltaMemConfig(write_granularity="token", num_state_heads=1, **kw)


def ssw(**kw: Any) -> DeltaMemConfig:
    """Sequence-State Write: one step per chat message, from the mean of its tokens' attention inputs."""
    return DeltaMemConfig(write_granularity="message_mean", num_state_heads=1, **kw)


def msw(**kw: Any) -> DeltaMemConfig:
    """Multi-State Write: token writes into 4 parallel 8×8 states per layer."""
    return DeltaMemConfig(write_granularity="token", num_state_heads=kw.pop("num_state_heads", 4), **kw)
