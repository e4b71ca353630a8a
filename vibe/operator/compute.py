"""Where the placement work runs: a pool of worker processes (or threads), off the event loop.

Role: a solve is CPU-bound Python and numpy for up to about a second; in the operator's process it would
hold the GIL against every other reconcile and against Kopf's watch handling. ``Computer`` runs
``compute`` (plan, render, size check: pure functions of picklable inputs) in a process pool, so N
deployments place on N cores, and the event loop keeps serving watch events meanwhile. The pool uses the
``spawn`` start method (forking a process that runs threads and an event loop is unsafe) and is warmed
up at startup so the first reconcile does not pay for the workers' imports. ``processes=0`` runs in
threads instead (tests, tiny installs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import multiprocessing
from typing import Any

from vibe.operator import output, planning
from vibe.operator.output import InService
from vibe.operator.planning import WRITE, Inputs, Plan
from vibe.operator.problems import Problem


def compute(
    inputs: Inputs, current: InService | None, prior_drift: Any, now: dt.datetime, budget: float
) -> tuple[Plan, dict[str, str] | None]:
    """Plan, and render the ConfigMap data when the plan writes (see ``planning.plan``)."""
    plan = planning.plan(inputs, current, prior_drift=prior_drift, now=now, time_budget_s=budget)
    if plan.action != WRITE:
        return plan, None
    core = output.render(plan.result, inputs.gpus.fleet, inputs.spec.formats, baseline=plan.baseline)
    size = output.data_size(core)
    if size > output.MAX_DATA_BYTES:
        sizes = ", ".join(f"{k} {len(v) / 1e3:.0f} kB" for k, v in core.items())
        raise Problem(
            "OutputTooLarge",
            f"the placement data is {size / 1e6:.2f} MB ({sizes}), over a ConfigMap's 1 MB; "
            f"request fewer spec.output.formats",
        )
    return plan, core


def _warm() -> int:
    import vibe.placement.engine  # noqa: F401  (the solver's imports, once per worker)

    return 0


class Computer:
    """Runs ``compute`` in ``processes`` worker processes (0: in threads), at most that many at once."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.slots = asyncio.Semaphore(max(1, processes) if processes else 8)
        self.pool: concurrent.futures.Executor | None = None
        if processes:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=processes, mp_context=multiprocessing.get_context("spawn")
            )

    async def warm(self) -> None:
        if self.pool is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self.pool, _warm) for _ in range(self.processes)))

    async def run(self, *args: Any) -> tuple[Plan, dict[str, str] | None]:
        async with self.slots:
            if self.pool is None:
                return await asyncio.to_thread(compute, *args)
            return await asyncio.get_running_loop().run_in_executor(self.pool, compute, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
