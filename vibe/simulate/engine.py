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

        Serial: the slowest rank's non-expert time + (expert + dispatch/combine) x layers. Two
        micro-batches (each half of every rank's batch): per MoE layer the GPU computes both halves while
        the links carry both halves' dispatch and combine, 2 max(compute(half), comm(half)) + the
        pipeline's fill, min(compute(half), comm(half)) / layers; each half pays the GEMMs' floor again,
        so at small decode batches two micro-batches cost more than they save. The table's
        ``comm.overlap``: ``off`` serial; ``on`` two micro-batches; ``auto`` two micro-batches where the
        group spans nodes and they make the step faster (an operator enables SGLang's two-batch overlap
        where it pays), serial otherwise. A step in which some rank has a single token runs serially
        (it cannot be split).
        """
        assert self.floor_factor is not None and self.compute_factor is not None
        table = self.table_at(t)
        total = float(tokens.sum())
        if total <= 0:
            return 0.0
        ff, cf = self.floor_factor, self.compute_factor

        def serial() -> float:  # taken only where it may be the answer (not under overlap "on")
            ne = float(self.nonexpert.ranks(tokens, decode_reqs, decode_ctx, pairs, sampled, ff, cf).max())
            ex, comm = table.step(total, float(tokens.max()), k, extend)
            return ne + (ex + comm) * self.layer_scale + self.overhead_s

        mode = table.comm.overlap
        spans = table.comm.num_gpus > table.comm.gpus_per_node
        if mode == "off" or (mode == "auto" and not spans) or tokens[tokens > 0].min() < 2:
            return serial()
        ne_h = float(
            self.nonexpert.ranks(
                tokens / 2, decode_reqs / 2, decode_ctx / 2, pairs / 2, sampled / 2, ff, cf
            ).max()
        )
        ex_h, comm_h = table.step(total / 2, float(tokens.max()) / 2, k, extend)
        layers = self.nonexpert.model.moe_layers
        compute = ne_h + ex_h * self.layer_scale
        comm_2 = comm_h * self.layer_scale
        two = 2 * max(compute, comm_2) + min(compute, comm_2) / max(layers, 1) + self.overhead_s
        return min(serial(), two) if mode == "auto" else two


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
    return _Engine(arrival, prompt, output, group, mode, seed).run(progress)


class _Engine:
    """One ``run``'s state: the ranks' queues, running batches and KV, and the clock.

    ``chunked``: [request, prompt tokens done, rank] of the requests being prefilled, FCFS. The running
    (decoding) requests are parallel arrays: ``run_id``, ``run_left`` (tokens still to produce),
    ``run_ctx`` (context length), ``run_rank``.
    """

    def __init__(
        self,
        arrival: np.ndarray,
        prompt: np.ndarray,
        output: np.ndarray,
        group: Group,
        mode: str,
        seed: int,
    ) -> None:
        self.arrival, self.prompt, self.output = arrival, prompt, output
        self.group, self.mode = group, mode
        self.n = n = int(arrival.size)
        self.cfg = group.config
        self.g = g = group.num_gpus
        self.kv_cap = kv_cap = group.kv_tokens // g  # per rank
        self.need = need = prompt + (0 if mode == "prefill" else output)
        if n and int(need.max()) > kv_cap:
            raise SimulationError(
                f"a request needs {int(need.max())} KV tokens but one GPU of the {group.name} group holds "
                f"{kv_cap} (more memory or shorter requests)"
            )
        self.order = order = np.argsort(arrival, kind="stable")
        self.rank_of = np.empty(n, dtype=np.int64)
        self.rank_of[order] = np.arange(n) % g  # round-robin over the ranks, in arrival order
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        samples = group.tables[0][1].samples
        self.ks = np.random.default_rng([seed, 3]).integers(samples, size=4096)
        self.waiting: list[deque[int]] = [deque() for _ in range(g)]
        self.pending: set[int] = set()  # ranks with a non-empty waiting queue
        self.chunked: list[list[int]] = []  # [request, prompt tokens done, rank], FCFS
        self.run_id = np.empty(0, dtype=np.int64)
        self.run_left = np.empty(0, dtype=np.int64)
        self.run_ctx = np.empty(0, dtype=np.float64)
        self.run_rank = np.empty(0, dtype=np.int64)
        self.kv_used = np.zeros(g, dtype=np.int64)
        self.active = np.zeros(g, dtype=np.int64)
        self.nxt = self.done = self.steps = 0
        self.decode_first = self.cfg.scheduler == "decode-first"

    def release(self, ids: np.ndarray) -> None:
        """The requests are finished: free their KV and their places in the ranks' batches."""
        self.done += int(ids.size)
        r = self.rank_of[ids]
        np.subtract.at(self.kv_used, r, self.need[ids])
        np.subtract.at(self.active, r, 1)

    def start_decoding(self, ids: list[int], now: float) -> None:
        """The requests have their first token: they join the running batch (or finish, at one token)."""
        a = np.asarray(ids, dtype=np.int64)
        left = self.output[a] - 1
        fin = left <= 0
        self.finish[a[fin]] = now
        self.release(a[fin])
        keep = ~fin
        self.run_id = np.concatenate([self.run_id, a[keep]])
        self.run_left = np.concatenate([self.run_left, left[keep]])
        self.run_ctx = np.concatenate([self.run_ctx, (self.prompt[a[keep]] + 1).astype(np.float64)])
        self.run_rank = np.concatenate([self.run_rank, self.rank_of[a[keep]]])

    def decode_tokens(self, mask: np.ndarray, now: float) -> None:
        """The masked running requests each got one token; the finished ones leave."""
        self.run_left[mask] -= 1
        self.run_ctx[mask] += 1
        fin = mask & (self.run_left <= 0)
        if fin.any():
            ids = self.run_id[fin]
            self.finish[ids] = now
            self.release(ids)
            keep = ~fin
            self.run_id = self.run_id[keep]
            self.run_left = self.run_left[keep]
            self.run_ctx = self.run_ctx[keep]
            self.run_rank = self.run_rank[keep]

    def admit(self, r: int, room: int | None) -> int | None:
        """The next waiting request of rank r if it fits (None if not), counted in."""
        q = self.waiting[r]
        if not q or self.active[r] >= self.cfg.max_running or (room is not None and room <= 0):
            return None
        req = q[0]
        if self.kv_used[r] + int(self.need[req]) > self.kv_cap:
            return None
        q.popleft()
        if not q:
            self.pending.discard(r)
        self.kv_used[r] += int(self.need[req])
        self.active[r] += 1
        return req

    def arrive(self, t: float) -> None:
        """Queue the requests that have arrived by t on their ranks."""
        while self.nxt < self.n and self.arrival[self.order[self.nxt]] <= t:
            req = int(self.order[self.nxt])
            self.waiting[int(self.rank_of[req])].append(req)
            self.pending.add(int(self.rank_of[req]))
            self.nxt += 1

    def schedule_decode(self, t: float) -> np.ndarray:
        """Decode mode: admit every waiting request that fits (its first token is sent now); all decode."""
        admitted: list[int] = []
        for r in sorted(self.pending):
            while (got := self.admit(r, None)) is not None:
                self.first[got] = t
                admitted.append(got)
        if admitted:
            self.start_decoding(admitted, t)
        return np.ones(self.run_id.size, dtype=bool)

    def schedule_prefill(self, batch: list[tuple[list[int], int]]) -> np.ndarray:
        """Fill ``batch`` with this step's prefill chunks; the mask of the running requests that decode.

        Chunks continue the partly prefilled prompts first, then admit waiting requests, within each
        rank's token budget (less its decode tokens under decode-first).
        """
        g, cfg, room = self.g, self.cfg, np.full(self.g, self.cfg.chunk_tokens, dtype=np.int64)
        if self.decode_first and self.mode == "colocated" and self.run_id.size:
            room -= np.bincount(self.run_rank, minlength=g)
        for entry in self.chunked:
            r = entry[2]
            if room[r] <= 0:
                continue
            take = min(int(self.prompt[entry[0]]) - entry[1], int(room[r]))
            batch.append((entry, take))
            room[r] -= take
        for r in sorted(self.pending):
            while (got := self.admit(r, int(room[r]))) is not None:
                entry = [got, 0, r]
                self.chunked.append(entry)
                take = min(int(self.prompt[got]), int(room[r]))
                batch.append((entry, take))
                room[r] -= take
        if self.mode == "prefill":
            return np.zeros(self.run_id.size, dtype=bool)
        if self.decode_first or cfg.mixed_chunk:
            return np.ones(self.run_id.size, dtype=bool)
        # prefill-first: a rank with a prefill batch runs it; its decoding requests wait
        busy = np.zeros(g, dtype=bool)
        busy[[e[2] for e, _ in batch]] = True
        return ~busy[self.run_rank]

    def finish_prefills(
        self, batch: list[tuple[list[int], int]], completing: list[list[int]], t: float
    ) -> None:
        """Count the step's prefill chunks in; the completed prompts get their first token at t."""
        for e, x in batch:
            e[1] += x
        if completing:
            ids = [e[0] for e in completing]
            self.chunked = [e for e in self.chunked if e[1] < self.prompt[e[0]]]
            self.first[ids] = t
            if self.mode == "prefill":
                self.finish[ids] = t
                self.release(np.asarray(ids, dtype=np.int64))
            else:
                self.start_decoding(ids, t)

    def run(self, progress: Progress | None) -> EngineResult:
        """Step until every request has finished."""
        n, g, group, arrival, order = self.n, self.g, self.group, self.arrival, self.order
        t = 0.0
        last_report = -1
        while self.done < n:
            self.arrive(t)
            t_up = group.available(t)
            if t_up > t:
                t = t_up
                continue
            k = int(self.ks[self.steps % self.ks.size])
            batch: list[tuple[list[int], int]] = []  # (chunked entry, tokens this step)
            decoding = self.schedule_decode(t) if self.mode == "decode" else self.schedule_prefill(batch)
            dec_rank = self.run_rank[decoding]
            dreq = np.bincount(dec_rank, minlength=g).astype(np.float64)
            if not batch and not dreq.any():
                if self.nxt < n:  # idle until the next arrival
                    t = max(t, float(arrival[order[self.nxt]]))
                    continue
                if not self.pending and not self.chunked and self.run_id.size == 0:
                    break  # nothing left (defensive: done < n cannot happen here)
                raise SimulationError(f"the {group.name} group cannot admit a waiting request")
            dctx = np.bincount(dec_rank, weights=self.run_ctx[decoding], minlength=g)
            tokens = dreq.copy()
            pairs = np.zeros(g)
            sampled = dreq.copy()
            completing: list[list[int]] = []
            for e, x in batch:
                tokens[e[2]] += x
                pairs[e[2]] += x * e[1] + x * x / 2.0
                if e[1] + x >= self.prompt[e[0]]:
                    completing.append(e)
                    sampled[e[2]] += 1
            dt = group.step_seconds(t, tokens, dreq, dctx, pairs, sampled, k, bool(batch))
            t += dt
            self.steps += 1
            if decoding.any():
                self.decode_tokens(decoding, t)
            self.finish_prefills(batch, completing, t)
            if progress is not None and self.steps // 2000 != last_report:
                last_report = self.steps // 2000
                progress(self.done, n, t)
        if progress is not None:
            progress(self.done, n, t)
        return EngineResult(self.first, self.finish, self.steps)
