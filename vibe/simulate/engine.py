"""The serving engine's scheduler, step by step, as SGLang (or vLLM) runs one expert-parallel group.

Role: turns requests into first-token and finish times, asking ``Group.step_seconds`` for each step.

What it models (data-parallel attention over the group: every GPU is one attention rank with its own
scheduler, KV pool and batch; the ranks meet in every MoE layer's dispatch and combine):

* a request goes to one rank on arrival, round-robin (SGLang's data-parallel controller's default);
* continuous batching: requests join and leave a rank's running batch between steps;
* FCFS admission from the rank's waiting queue while it has room: at most ``max_running`` requests per
  rank (prefilling or decoding), and KV cache for the prompt and whole output reserved up front in the
  rank's pool (SGLang reserves an estimate and retracts on overflow; reserving all of it never
  retracts: stated, conservative);
* chunked prefill: a step takes at most ``chunk_tokens`` prompt tokens per rank, continuing a partly
  prefilled prompt first; a long prompt spans several steps;
* scheduler ``prefill-first`` (SGLang's default): a rank that can form a prefill batch runs it and its
  decoding requests wait (``mixed_chunk`` puts them into the prefill step instead, SGLang's
  ``--enable-mixed-chunk``); ``decode-first`` (vLLM v1): every running request's next token is
  scheduled first, and prefill chunks fill what is left of the rank's token budget;
* a step's time: the slowest rank's non-expert time (each from its own batch, on its own GPU) plus the
  group's expert and dispatch/combine time for all ranks' tokens (``Group.step_seconds``);
* a request's first token comes at the end of the step that finishes its prompt; each decode step then
  gives every decoding request one token.

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

SCHEDULERS = ("prefill-first", "decode-first")


class SimulationError(ValueError):
    """Inputs the simulator cannot run (one line, for the CLI)."""


@dataclass(frozen=True)
class EngineConfig:
    """Per-GPU (per attention rank) scheduler limits (SGLang flags, per data-parallel rank)."""

    chunk_tokens: int = 8192  # --chunked-prefill-size (SGLang's default for large GPUs)
    max_running: int = 256  # --max-running-requests per rank (DeepEP's low-latency buffers: <= 256)
    mixed_chunk: bool = False  # --enable-mixed-chunk
    scheduler: str = "prefill-first"  # or decode-first (vLLM v1)

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1 or self.max_running < 1:
            raise SimulationError("chunk tokens and max running requests must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise SimulationError(f"scheduler is one of {', '.join(SCHEDULERS)}, not {self.scheduler!r}")


@dataclass
class Group:
    """One expert-parallel group: its GPUs' step cost over time and its KV capacity.

    ``tables``: (from time, ExpertTable), ascending; a step uses the table in force when it starts.
    ``down``: (start, end) intervals in which no step starts (restart, weight copy).
    ``floor_factor``, ``compute_factor``: [G] each GPU's slowness for its non-expert work (1 = typical).
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
    floor_factor: np.ndarray | None = None
    compute_factor: np.ndarray | None = None

    def __post_init__(self) -> None:
        one = np.ones(self.num_gpus)
        self.floor_factor = one if self.floor_factor is None else np.asarray(self.floor_factor, float)
        self.compute_factor = one if self.compute_factor is None else np.asarray(self.compute_factor, float)

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
        self,
        t: float,
        tokens: np.ndarray,
        decode_reqs: np.ndarray,
        decode_ctx: np.ndarray,
        pairs: np.ndarray,
        sampled: np.ndarray,
        k: int,
        extend: bool,
    ) -> float:
        """One step's seconds from each rank's batch ([G] arrays, ``NonExpertCost.ranks``'s meaning).

        Serial: the slowest rank's non-expert time + (expert + dispatch/combine) x layers. With the
        table's ``overlap`` (two micro-batches, each half of every rank's batch), per MoE layer the GPU
        computes both halves while the links carry both halves' dispatch and combine:
        2 max(compute(half), comm(half)) + the pipeline's fill, min(compute(half), comm(half)) / layers
        (each half pays the GEMMs' floor again: at decode batch sizes overlap can cost more than it saves).
        """
        assert self.floor_factor is not None and self.compute_factor is not None
        table = self.table_at(t)
        total = float(tokens.sum())
        if total <= 0:
            return 0.0
        ff, cf = self.floor_factor, self.compute_factor
        if not table.comm.overlap or total < 2:
            ne = float(self.nonexpert.ranks(tokens, decode_reqs, decode_ctx, pairs, sampled, ff, cf).max())
            ex, comm = table.step(total, float(tokens.max()), k, extend)
            return ne + (ex + comm) * self.layer_scale + self.overhead_s
        ne_h = float(
            self.nonexpert.ranks(
                tokens / 2, decode_reqs / 2, decode_ctx / 2, pairs / 2, sampled / 2, ff, cf
            ).max()
        )
        ex_h, comm_h = table.step(total / 2, float(tokens.max()) / 2, k, extend)
        layers = self.nonexpert.model.moe_layers
        compute = ne_h + ex_h * self.layer_scale
        comm = comm_h * self.layer_scale
        return 2 * max(compute, comm) + min(compute, comm) / max(layers, 1) + self.overhead_s


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
    kv_cap = group.kv_tokens // g  # per rank
    need = prompt + (0 if mode == "prefill" else output)
    if n and int(need.max()) > kv_cap:
        raise SimulationError(
            f"a request needs {int(need.max())} KV tokens but one GPU of the {group.name} group holds "
            f"{kv_cap} (more memory or shorter requests)"
        )
    order = np.argsort(arrival, kind="stable")
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[order] = np.arange(n) % g  # round-robin over the ranks, in arrival order
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    samples = group.tables[0][1].samples
    ks = np.random.default_rng([seed, 3]).integers(samples, size=4096)
    waiting: list[deque[int]] = [deque() for _ in range(g)]
    pending: set[int] = set()  # ranks with a non-empty waiting queue
    chunked: list[list[int]] = []  # [request, prompt tokens done, rank], FCFS
    run_id = np.empty(0, dtype=np.int64)
    run_left = np.empty(0, dtype=np.int64)
    run_ctx = np.empty(0, dtype=np.float64)
    run_rank = np.empty(0, dtype=np.int64)
    kv_used = np.zeros(g, dtype=np.int64)
    active = np.zeros(g, dtype=np.int64)
    nxt = done = steps = 0
    t = 0.0
    last_report = -1
    decode_first = cfg.scheduler == "decode-first"

    def release(ids: np.ndarray) -> None:
        nonlocal done
        done += int(ids.size)
        r = rank_of[ids]
        np.subtract.at(kv_used, r, need[ids])
        np.subtract.at(active, r, 1)

    def start_decoding(ids: list[int], now: float) -> None:
        nonlocal run_id, run_left, run_ctx, run_rank
        a = np.asarray(ids, dtype=np.int64)
        left = output[a] - 1
        fin = left <= 0
        finish[a[fin]] = now
        release(a[fin])
        keep = ~fin
        run_id = np.concatenate([run_id, a[keep]])
        run_left = np.concatenate([run_left, left[keep]])
        run_ctx = np.concatenate([run_ctx, (prompt[a[keep]] + 1).astype(np.float64)])
        run_rank = np.concatenate([run_rank, rank_of[a[keep]]])

    def decode_tokens(mask: np.ndarray, now: float) -> None:
        nonlocal run_id, run_left, run_ctx, run_rank
        run_left[mask] -= 1
        run_ctx[mask] += 1
        fin = mask & (run_left <= 0)
        if fin.any():
            ids = run_id[fin]
            finish[ids] = now
            release(ids)
            keep = ~fin
            run_id, run_left, run_ctx, run_rank = run_id[keep], run_left[keep], run_ctx[keep], run_rank[keep]

    def admit(r: int, room: int | None) -> int | None:
        """The next waiting request of rank r if it fits (None if not), counted in."""
        q = waiting[r]
        if not q or active[r] >= cfg.max_running or (room is not None and room <= 0):
            return None
        req = q[0]
        if kv_used[r] + int(need[req]) > kv_cap:
            return None
        q.popleft()
        if not q:
            pending.discard(r)
        kv_used[r] += int(need[req])
        active[r] += 1
        return req

    while done < n:
        while nxt < n and arrival[order[nxt]] <= t:
            req = int(order[nxt])
            waiting[int(rank_of[req])].append(req)
            pending.add(int(rank_of[req]))
            nxt += 1
        t_up = group.available(t)
        if t_up > t:
            t = t_up
            continue
        k = int(ks[steps % ks.size])
        batch: list[tuple[list[int], int]] = []  # (chunked entry, tokens this step)
        if mode == "decode":
            admitted: list[int] = []
            for r in sorted(pending):
                while (got := admit(r, None)) is not None:
                    first[got] = t
                    admitted.append(got)
            if admitted:
                start_decoding(admitted, t)
            decoding = np.ones(run_id.size, dtype=bool)
        else:
            room = np.full(g, cfg.chunk_tokens, dtype=np.int64)
            if decode_first and mode == "colocated" and run_id.size:
                room -= np.bincount(run_rank, minlength=g)
            for entry in chunked:
                r = entry[2]
                if room[r] <= 0:
                    continue
                take = min(int(prompt[entry[0]]) - entry[1], int(room[r]))
                batch.append((entry, take))
                room[r] -= take
            for r in sorted(pending):
                while (got := admit(r, int(room[r]))) is not None:
                    entry = [got, 0, r]
                    chunked.append(entry)
                    take = min(int(prompt[got]), int(room[r]))
                    batch.append((entry, take))
                    room[r] -= take
            if mode == "prefill":
                decoding = np.zeros(run_id.size, dtype=bool)
            elif decode_first or cfg.mixed_chunk:
                decoding = np.ones(run_id.size, dtype=bool)
            else:  # prefill-first: a rank with a prefill batch runs it; its decoding requests wait
                busy = np.zeros(g, dtype=bool)
                busy[[e[2] for e, _ in batch]] = True
                decoding = ~busy[run_rank]
        dec_rank = run_rank[decoding]
        dreq = np.bincount(dec_rank, minlength=g).astype(np.float64)
        if not batch and not dreq.any():
            if nxt < n:  # idle until the next arrival
                t = max(t, float(arrival[order[nxt]]))
                continue
            if not pending and not chunked and run_id.size == 0:
                break  # nothing left (defensive: done < n cannot happen here)
            raise SimulationError(f"the {group.name} group cannot admit a waiting request")
        dctx = np.bincount(dec_rank, weights=run_ctx[decoding], minlength=g)
        tokens = dreq.copy()
        pairs = np.zeros(g)
        sampled = dreq.copy()
        completing: list[list[int]] = []
        for e, x in batch:
            tokens[e[2]] += x
            pairs[e[2]] += x * e[1] + x * x / 2.0
            if e[1] + x >= prompt[e[0]]:
                completing.append(e)
                sampled[e[2]] += 1
        dt = group.step_seconds(t, tokens, dreq, dctx, pairs, sampled, k, bool(batch))
        t += dt
        steps += 1
        if decoding.any():
            decode_tokens(decoding, t)
        for e, x in batch:
            e[1] += x
        if completing:
            ids = [e[0] for e in completing]
            chunked = [e for e in chunked if e[1] < prompt[e[0]]]
            first[ids] = t
            if mode == "prefill":
                finish[ids] = t
                release(np.asarray(ids, dtype=np.int64))
            else:
                start_decoding(ids, t)
        if progress is not None and steps // 2000 != last_report:
            last_report = steps // 2000
            progress(done, n, t)
    if progress is not None:
        progress(done, n, t)
    return EngineResult(first, finish, steps)
