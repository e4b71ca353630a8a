"""The serving engine's scheduler, step by step, as SGLang runs one expert-parallel group.

Role: turns requests into first-token and finish times, asking ``Group.step_seconds`` for each step.

What it models (SGLang's defaults, data-parallel attention over the group):

* continuous batching: requests join and leave the running batch between steps;
* FCFS admission from one waiting queue, while the group has room: at most ``max_running`` requests per
  GPU admitted (prefilling or decoding), and KV cache for the request's prompt and whole output
  reserved up front (SGLang reserves an estimate and retracts on overflow; reserving all of it never
  retracts: stated, conservative);
* chunked prefill: a prefill step takes at most ``chunk_tokens`` prompt tokens per GPU, continuing a
  partly prefilled prompt first; a long prompt spans several steps;
* prefill first: when a prefill batch can be formed it runs, and the decoding requests wait for it
  (SGLang's default; ``mixed_chunk`` puts the decode tokens into the prefill step instead, SGLang's
  ``--enable-mixed-chunk``);
* a request's first token comes at the end of the step that finishes its prompt; each decode step then
  gives every running request one token.

Modes: ``colocated`` (prefill and decode in one group), ``prefill`` (PD disaggregation: a request leaves
after its prompt) and ``decode`` (it arrives prefilled; its first token is sent when it is admitted).
Down intervals (a restart, a weight copy) start no step.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vibe.simulate.costs import ExpertTable, NonExpertCost

#: progress(done requests, all requests, simulated seconds).
Progress = Callable[[int, int, float], None]


class SimulationError(ValueError):
    """Inputs the simulator cannot run (one line, for the CLI)."""


@dataclass(frozen=True)
class EngineConfig:
    """Per-GPU scheduler limits (SGLang flags, per data-parallel rank)."""

    chunk_tokens: int = 8192  # --chunked-prefill-size (SGLang's default for large GPUs)
    max_running: int = 256  # --max-running-requests per rank (DeepEP's low-latency buffers: <= 256)
    mixed_chunk: bool = False  # --enable-mixed-chunk

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1 or self.max_running < 1:
            raise SimulationError("chunk tokens and max running requests must be at least 1")


@dataclass
class Group:
    """One expert-parallel group: its GPUs' step cost over time and its KV capacity.

    ``tables``: (from time, ExpertTable), ascending; a step uses the table in force when it starts.
    ``down``: (start, end) intervals in which no step starts (restart, weight copy).
    """

    name: str
    num_gpus: int
    nonexpert: NonExpertCost
    tables: list[tuple[float, ExpertTable]]
    kv_tokens: int
    config: EngineConfig
    layer_scale: float = 1.0  # model MoE layers / load profile layers
    down: list[tuple[float, float]] = field(default_factory=list)
    overhead_s: float = 0.0

    def table_at(self, t: float) -> ExpertTable:
        starts = [s for s, _ in self.tables]
        return self.tables[max(bisect.bisect_right(starts, t) - 1, 0)][1]

    def available(self, t: float) -> float:
        """t, or the end of the down interval t falls in."""
        for a, b in self.down:
            if a <= t < b:
                return b
        return t

    def step_seconds(
        self, t: float, tokens: float, decode_reqs: int, decode_ctx: float, pairs: float, sampled: int, k: int
    ) -> float:
        """One step's seconds (``costs`` module doc): per-GPU shares of a group-wide batch."""
        g = self.num_gpus
        ne = self.nonexpert.step(tokens / g, decode_reqs / g, decode_ctx / g, pairs / g, sampled / g)
        ex, comm = self.table_at(t)(tokens, k)
        return ne + (ex + comm) * self.layer_scale + self.overhead_s


@dataclass
class EngineResult:
    """Per request: first-token and finish times (NaN if never), and the group's step count."""

    first: np.ndarray
    finish: np.ndarray
    steps: int


def run(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    group: Group,
    mode: str,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> EngineResult:
    """Simulate one group serving the requests (module doc). Arrays are [N], any order."""
    if mode not in ("colocated", "prefill", "decode"):
        raise ValueError(f"unknown mode {mode!r}")
    n = int(arrival.size)
    cfg = group.config
    g = group.num_gpus
    budget = cfg.chunk_tokens * g
    cap = cfg.max_running * g
    need = prompt + (0 if mode == "prefill" else output)
    if n and int(need.max()) > group.kv_tokens:
        raise SimulationError(
            f"a request needs {int(need.max())} KV tokens but the {group.name} group holds "
            f"{group.kv_tokens} (more GPUs, more memory or shorter requests)"
        )
    order = np.argsort(arrival, kind="stable")
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    samples = group.tables[0][1].samples
    ks = np.random.default_rng([seed, 3]).integers(samples, size=4096)
    waiting: deque[int] = deque()
    chunked: list[list[int]] = []  # [request, prompt tokens done]
    run_id = np.empty(0, dtype=np.int64)
    run_left = np.empty(0, dtype=np.int64)
    run_ctx = np.empty(0, dtype=np.float64)
    kv_used = 0
    nxt = done = steps = 0
    t = 0.0
    last_report = -1

    def start_decoding(ids: list[int], now: float) -> None:
        nonlocal run_id, run_left, run_ctx, kv_used, done
        a = np.asarray(ids, dtype=np.int64)
        left = output[a] - 1
        fin = left <= 0
        finish[a[fin]] = now
        done += int(fin.sum())
        kv_used -= int(need[a[fin]].sum())
        keep = ~fin
        run_id = np.concatenate([run_id, a[keep]])
        run_left = np.concatenate([run_left, left[keep]])
        run_ctx = np.concatenate([run_ctx, (prompt[a[keep]] + 1).astype(np.float64)])

    def decode_tokens(now: float) -> None:
        nonlocal run_id, run_left, run_ctx, kv_used, done
        run_left -= 1
        run_ctx += 1
        fin = run_left <= 0
        if fin.any():
            ids = run_id[fin]
            finish[ids] = now
            done += int(ids.size)
            kv_used -= int(need[ids].sum())
            keep = ~fin
            run_id, run_left, run_ctx = run_id[keep], run_left[keep], run_ctx[keep]

    def decode_step(k: int) -> None:
        """A step of only the running requests' next tokens (routing sample k)."""
        nonlocal t, steps
        b = int(run_id.size)
        dt = group.step_seconds(t, b, b, float(run_ctx.sum()), 0.0, b, k)
        t += dt
        steps += 1
        decode_tokens(t)

    while done < n:
        while nxt < n and arrival[order[nxt]] <= t:
            waiting.append(int(order[nxt]))
            nxt += 1
        t_up = group.available(t)
        if t_up > t:
            t = t_up
            continue
        active = len(chunked) + run_id.size
        k = int(ks[steps % ks.size])
        if mode == "decode":
            admitted: list[int] = []
            while waiting and active + len(admitted) < cap:
                r = waiting[0]
                if kv_used + int(need[r]) > group.kv_tokens:
                    break
                waiting.popleft()
                kv_used += int(need[r])
                first[r] = t
                admitted.append(r)
            if admitted:
                start_decoding(admitted, t)
            if run_id.size == 0:
                if nxt < n:
                    t = max(t, float(arrival[order[nxt]]))
                continue
            decode_step(k)
        else:
            batch: list[tuple[list[int], int]] = []  # (chunked entry, tokens this step)
            room = budget
            for entry in chunked:
                if room <= 0:
                    break
                take = min(int(prompt[entry[0]]) - entry[1], room)
                batch.append((entry, take))
                room -= take
            while waiting and room > 0 and active < cap:
                r = waiting[0]
                if kv_used + int(need[r]) > group.kv_tokens:
                    break
                waiting.popleft()
                kv_used += int(need[r])
                entry = [r, 0]
                chunked.append(entry)
                active += 1
                take = min(int(prompt[r]), room)
                batch.append((entry, take))
                room -= take
            mixed = cfg.mixed_chunk and mode == "colocated"
            if batch:
                tokens = sum(x for _, x in batch)
                pairs = sum(x * e[1] + x * x / 2.0 for e, x in batch)
                completing = [e for e, x in batch if e[1] + x >= prompt[e[0]]]
                b = int(run_id.size) if mixed else 0
                ctx = float(run_ctx.sum()) if mixed else 0.0
                dt = group.step_seconds(t, tokens + b, b, ctx, pairs, len(completing) + b, k)
                t += dt
                steps += 1
                if b:
                    decode_tokens(t)
                for e, x in batch:
                    e[1] += x
                ids = [e[0] for e in completing]
                chunked = [e for e in chunked if e[1] < prompt[e[0]]]
                first[ids] = t
                if mode == "prefill":
                    finish[ids] = t
                    done += len(ids)
                    kv_used -= int(need[ids].sum()) if ids else 0
                elif ids:
                    start_decoding(ids, t)
            elif mode == "colocated" and run_id.size:
                decode_step(k)
            elif nxt < n:
                t = max(t, float(arrival[order[nxt]]))
            elif not waiting and not chunked and run_id.size == 0:
                break  # nothing left (defensive: done < n cannot happen here)
        if progress is not None and steps // 2000 != last_report:
            last_report = steps // 2000
            progress(done, n, t)
    if progress is not None:
        progress(done, n, t)
    return EngineResult(first, finish, steps)
