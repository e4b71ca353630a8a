"""Where the placement work runs: two lanes of worker processes (or threads), off the event loop.

Role: a solve is CPU-bound Python and numpy; in the operator's process it would hold the GIL against
every other reconcile and against Kopf's watch handling. ``Computer`` runs ``compute`` (plan, render,
size check: pure functions of picklable inputs) in process pools, so N deployments place on N cores and
the event loop keeps serving watch events meanwhile. Pools use the ``spawn`` start method (forking a
process that runs threads and an event loop is unsafe) and are warmed up at startup so the first
reconcile does not pay for the workers' imports. ``processes=0`` runs in threads instead (tests).

Robustness, each point a fault the operator met:

* **Size.** The solver's memory grows with ``instance_units`` (about 23 bytes per unit, measured by
  ``benchmarks/robustness.py``); the CRD refuses specs over ``MAX_UNITS`` at admission (the same
  number, a test keeps them equal). What passes is routed by size: work over ``LARGE_UNITS`` goes to a
  one-process *large* lane, the rest to the *small* lane, so a large solve never holds up the small
  deployments' re-placements (fairness: the large lane also runs at a lower CPU priority), and large
  solves run one at a time (memory).
* **Memory and time per solve.** Each worker caps its address space (``RLIMIT_AS``: its size after
  imports plus the lane's allowance): a solve that needs more gets ``MemoryError`` and the worker lives
  on. Each solve has a wall-clock deadline; past it the lane's workers are killed and the pool rebuilt.
  Both become ``Problem("InstanceTooLarge")``, which the reconciler remembers per input fingerprint
  so that the same inputs are not solved again until they change (no hot retry of a deterministic
  failure).
* **A dead worker** (OOM-killed, crashed) breaks a ``ProcessPoolExecutor`` for good: every later
  submit raises ``BrokenProcessPool``. The lane rebuilds its pool, counts it
  (``vibe_placement_worker_restarts_total``), tells the caller (the reconciler posts an Event) and
  retries the work once; work that breaks the pool twice is ``InstanceTooLarge``. A lane that cannot
  rebuild its pool is unhealthy, and the operator's liveness probe fails (``healthy``).
* **Fairness between tenants.** A lane's workers are handed out round robin by namespace (``FairSlots``),
  first come first served within one: a tenant that queued three large solves no longer makes another
  tenant's one wait for all three (before: 8 s alone, 23 s behind them), only for the one running.
* **Orphans.** Workers die with the operator: ``PR_SET_PDEATHSIG`` (Linux) plus a thread that exits
  when the parent changes, so a ``kill -9`` of the operator leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import datetime as dt
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from vibe.operator import metrics, output, planning
from vibe.operator.output import InService
from vibe.operator.planning import WRITE, Inputs, Plan
from vibe.operator.problems import Problem
from vibe.spec import DeploymentSpec

logger = logging.getLogger("vibe.operator")

#: Largest instance the CRD admits, in ``instance_units`` (Kimi-K2-sized 61 x 384 on 384 GPUs is 45 M,
#: measured at 0.83 GB and 9 s; keep equal to the CRD's CEL rule on spec).
MAX_UNITS = 48_000_000
#: Instances above this go to the large lane (DeepSeek-V3 on 64 GPUs x 5 slots is 4.8 M units).
LARGE_UNITS = 8_000_000
#: Measured bytes of solver memory per unit (benchmarks/robustness.py; 19-23 on every shape tried).
BYTES_PER_UNIT = 23

#: Per-worker address-space allowance above its size after imports, by lane.
SMALL_MEMORY_BYTES = 768 << 20
LARGE_MEMORY_BYTES = 2 << 30
#: Wall-clock deadline of one solve, by lane (the largest admissible instance solves in ~10-20 s).
SMALL_DEADLINE_S = 60.0
LARGE_DEADLINE_S = 180.0

#: CPU priority of the large lane's worker (nice value): a large solve takes the cores small ones leave.
LARGE_NICE = 10

PR_SET_PDEATHSIG = 1


def instance_units(layers: int, experts: int, gpus: int, slots_per_gpu: int) -> int:
    """Size of a placement problem as the solver's memory sees it: ``L*E*(4*G + P-E+1)``.

    The search keeps five [L, E, G] float arrays and the placement's [L, E, P-E+1] logical-to-physical
    table (P = G x slots), the two terms that dominate its memory (see ``BYTES_PER_UNIT``)."""
    p = gpus * slots_per_gpu
    return layers * experts * (4 * gpus + max(1, p - experts + 1))


def spec_units(spec: DeploymentSpec) -> int:
    return instance_units(spec.model.layers, spec.model.experts, spec.gpus.count, spec.gpus.slots_per_gpu)


def compute(
    inputs: Inputs, current: InService | None, prior_drift: Any, now: dt.datetime, budget: float
) -> tuple[Plan, dict[str, str] | None]:
    """Plan, and render the ConfigMap data when the plan writes (see ``planning.plan``)."""
    try:
        plan = planning.plan(inputs, current, prior_drift=prior_drift, now=now, time_budget_s=budget)
        if plan.action != WRITE:
            return plan, None
        core = output.render(plan.result, inputs.gpus.fleet, inputs.spec.formats, baseline=plan.baseline)
    except MemoryError:
        raise too_large(inputs.spec, "ran out of the memory allowed to one solve") from None
    size = output.data_size(core)
    if size > output.MAX_DATA_BYTES:
        sizes = ", ".join(f"{k} {len(v) / 1e3:.0f} kB" for k, v in core.items())
        raise Problem(
            "OutputTooLarge",
            f"the placement data is {size / 1e6:.2f} MB ({sizes}), over a ConfigMap's 1 MB; "
            f"request fewer spec.output.formats",
        )
    return plan, core


def too_large(spec: DeploymentSpec, what: str) -> Problem:
    m, g = spec.model, spec.gpus
    return Problem(
        "InstanceTooLarge",
        f"the placement of {m.layers} layers x {m.experts} experts on {g.count} GPUs x {g.slots_per_gpu} "
        f"slots {what}; it will not be retried until the spec or its inputs change (use fewer GPUs or "
        f"slots per GPU, or split the model)",
    )


# --------------------------------------------------------------------------------------------------
# Worker processes


def _init_worker(parent: int, allowance: int, nice: int = 0) -> None:
    """In each worker: die with the parent, cap the address space, lower its CPU priority (the large
    lane: small placements get the cores first), load the solver once."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    from vibe.placement import solve  # noqa: F401  (the solver's imports, before measuring the size)

    if allowance > 0:
        limit = _vm_size() + allowance
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _vm_size() -> int:
    """This process's virtual memory size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _warm() -> int:
    return os.getpid()


def _pids(pool: concurrent.futures.Executor | None) -> list[int]:
    """The worker processes' ids of a process pool (none for a thread pool or no pool)."""
    procs = getattr(pool, "_processes", None) or {}
    return [p.pid for p in list(procs.values()) if p.pid]


def _single_threaded_math() -> None:
    """One solve per process: BLAS thread pools would only oversubscribe the cores and reserve address
    space. Set before the workers are spawned (they inherit the environment)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # glibc reserves 64 MiB of address space per thread arena; under RLIMIT_AS that is memory lost.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")


class FairSlots:
    """At most ``n`` holders at a time; waiters are let in round robin by tenant, FIFO within a tenant.

    ``asyncio.Semaphore`` serves waiters in arrival order, so whoever queues most work holds the lane.
    Here each tenant (a namespace) has its own queue, and a freed slot goes to the waiting tenant served
    longest ago. Event-loop only (no locks)."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.queues: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self.served: dict[str, int] = {}  # tenant -> sequence number of its last grant (waiting ones)
        self.grants = 0

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[None]:
        if self.free > 0 and not self.queues:
            self.free -= 1
            self._granted(tenant)
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.queues.setdefault(tenant, collections.deque()).append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # the slot was handed over as we were cancelled: pass it on
                else:
                    self._forget(tenant, fut)
                raise
        try:
            yield
        finally:
            self._release()

    def _granted(self, tenant: str) -> None:
        self.grants += 1
        self.served[tenant] = self.grants
        if len(self.served) > 4 * (len(self.queues) + 16):  # forget tenants with nothing queued
            self.served = {t: n for t, n in self.served.items() if t in self.queues or t == tenant}

    def _release(self) -> None:
        while self.queues:
            tenant = min(self.queues, key=lambda t: self.served.get(t, 0))
            queue = self.queues[tenant]
            fut = queue.popleft()
            if not queue:
                del self.queues[tenant]
            if not fut.done():
                self._granted(tenant)
                fut.set_result(None)
                return
        self.free += 1

    def _forget(self, tenant: str, fut: asyncio.Future[None]) -> None:
        queue = self.queues.get(tenant)
        if queue is not None and fut in queue:
            queue.remove(fut)
            if not queue:
                del self.queues[tenant]


class Lane:
    """``processes`` worker processes behind one pool; rebuilt when a worker dies.

    ``make_pool`` builds the pool (tests pass one that fails, to see the lane turn unhealthy)."""

    def __init__(
        self,
        name: str,
        processes: int,
        *,
        allowance: int,
        deadline_s: float,
        nice: int = 0,
        make_pool: Callable[[], concurrent.futures.Executor] | None = None,
    ) -> None:
        self.name = name
        self.nice = nice
        self.processes = processes
        self.allowance = allowance
        self.deadline_s = deadline_s
        self.slots = FairSlots(processes)
        self.healthy = True
        self.restarts = 0
        self.submitted = 0  # work items handed to the pool (tests, benchmarks)
        self._make_pool = make_pool or self._spawn_pool
        self.pool: concurrent.futures.Executor | None = self._make_pool()

    def _spawn_pool(self) -> concurrent.futures.Executor:
        _single_threaded_math()
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), self.allowance, self.nice),
        )

    async def warm(self) -> list[int]:
        """Start every worker (imports done); their pids."""
        pool = self.pool
        if pool is None:
            raise BrokenProcessPool(f"{self.name} lane has no pool")
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(self.processes))))

    def pids(self) -> list[int]:
        return _pids(self.pool)

    async def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_lost: Callable[[str], None] | None = None,
        tenant: str = "",
    ) -> Any:
        """``fn(*args)`` in a worker: rebuilds the pool and retries once if a worker dies; raises
        ``WorkerLost`` when the work broke the pool twice and ``DeadlineExceeded`` past the deadline.
        ``tenant``: whose work it is (a namespace), for the round robin between tenants."""
        async with self.slots.hold(tenant):
            attempt = 0
            while attempt < 2:
                pool = self.pool or await self._rebuild(None)
                try:
                    fut = asyncio.wrap_future(pool.submit(fn, *args))
                    self.submitted += 1
                except (BrokenProcessPool, RuntimeError):  # a worker died while idle, or shut down
                    await self._rebuild(pool, lost=False)
                    if on_lost is not None:
                        on_lost(
                            f"a placement worker process had died (killed, e.g. out of memory?); the "
                            f"{self.name} pool was rebuilt before this placement ran"
                        )
                    continue
                attempt += 1
                try:
                    return await asyncio.wait_for(fut, self.deadline_s)
                except TimeoutError:
                    self._kill(pool)
                    await self._rebuild(pool, lost=False)
                    raise DeadlineExceeded(self.deadline_s) from None
                except BrokenProcessPool:
                    await self._rebuild(pool)
                    msg = (
                        f"a placement worker process died while computing this placement (attempt "
                        f"{attempt} of 2; killed, e.g. out of memory?); the {self.name} pool was rebuilt"
                        + ("" if attempt == 2 else " and the work retried")
                    )
                    if on_lost is not None:
                        on_lost(msg)
            raise WorkerLost("the work broke the placement worker pool twice")

    async def _rebuild(
        self, broken: concurrent.futures.Executor | None, *, lost: bool = True
    ) -> concurrent.futures.Executor:
        """A new pool in place of ``broken`` (once, however many callers saw it break)."""
        if self.pool is not None and self.pool is not broken:
            return self.pool  # someone else rebuilt it already
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)
        self.pool = None
        self.restarts += 1
        metrics.WORKER_RESTARTS.labels(self.name).inc()
        logger.warning("placement worker pool (%s lane) broken%s; rebuilding", self.name,
                       " by a dead worker" if lost else "")  # fmt: skip
        try:
            self.pool = self._make_pool()
            await asyncio.wait_for(self.warm(), 120)
        except Exception as e:  # cannot spawn workers: the liveness probe fails, Kubernetes restarts us
            self.healthy = False
            metrics.COMPUTE_HEALTHY.labels(self.name).set(0)
            logger.error("cannot rebuild the %s placement worker pool: %s", self.name, e)
            raise WorkerLost(f"the {self.name} placement worker pool cannot be rebuilt: {e}") from e
        self.healthy = True
        metrics.COMPUTE_HEALTHY.labels(self.name).set(1)
        return self.pool

    def _kill(self, pool: concurrent.futures.Executor) -> None:
        for pid in _pids(pool):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        if self.pool is not None:
            self._kill(self.pool)
            self.pool.shutdown(wait=False, cancel_futures=True)


class WorkerLost(Exception):
    """The work could not be run: it broke the pool twice, or the pool cannot be rebuilt."""


class DeadlineExceeded(Exception):
    def __init__(self, deadline_s: float) -> None:
        super().__init__(f"took longer than {deadline_s:.0f} s")
        self.deadline_s = deadline_s


class Computer:
    """Runs ``compute`` in a small and a large lane of worker processes (``processes=0``: threads)."""

    def __init__(
        self,
        processes: int,
        *,
        small_deadline_s: float = SMALL_DEADLINE_S,
        large_deadline_s: float = LARGE_DEADLINE_S,
        small_memory_bytes: int = SMALL_MEMORY_BYTES,
        large_memory_bytes: int = LARGE_MEMORY_BYTES,
    ) -> None:
        self.processes = processes
        self.threads = asyncio.Semaphore(8)
        self.lanes: dict[str, Lane] = {}
        if processes:
            self.lanes["small"] = Lane(
                "small", processes, allowance=small_memory_bytes, deadline_s=small_deadline_s
            )
            self.lanes["large"] = Lane(
                "large", 1, allowance=large_memory_bytes, deadline_s=large_deadline_s, nice=LARGE_NICE
            )
            for name in self.lanes:
                metrics.COMPUTE_HEALTHY.labels(name).set(1)

    @property
    def healthy(self) -> bool:
        return all(lane.healthy for lane in self.lanes.values())

    def lane_for(self, spec: DeploymentSpec) -> Lane | None:
        if not self.lanes:
            return None
        return self.lanes["large" if spec_units(spec) > LARGE_UNITS else "small"]

    async def warm(self) -> None:
        await asyncio.gather(*(lane.warm() for lane in self.lanes.values()))

    async def run(
        self,
        inputs: Inputs,
        current: InService | None,
        prior_drift: Any,
        now: dt.datetime,
        budget: float,
        *,
        on_lost: Callable[[str], None] | None = None,
        tenant: str = "",
    ) -> tuple[Plan, dict[str, str] | None]:
        args = (inputs, current, prior_drift, now, budget)
        lane = self.lane_for(inputs.spec)
        if lane is None:
            async with self.threads:
                return await asyncio.to_thread(compute, *args)
        try:
            return await lane.run(compute, *args, on_lost=on_lost, tenant=tenant)
        except DeadlineExceeded as e:
            raise too_large(inputs.spec, f"did not finish within its {e.deadline_s:.0f} s deadline") from None
        except WorkerLost as e:
            if not lane.healthy:
                raise
            raise too_large(inputs.spec, f"killed its worker process twice ({e})") from None

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
