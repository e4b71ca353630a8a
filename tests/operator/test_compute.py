"""The placement workers under faults, with real processes: a worker killed (as a cgroup OOM kill
would), work that kills its worker every time, a pool that cannot be rebuilt, a solve over its memory
allowance or its deadline, a large solve beside small ones, and the operator killed under its workers.

No cluster: the faults live in the operator's own processes. Each test uses few, small solves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from operator_builders import deployment_body, profile_body

from vibe.cluster.waiting import wait_for
from vibe.operator import metrics
from vibe.operator.compute import LARGE_UNITS, Computer, Lane, WorkerLost, spec_units
from vibe.operator.gpus import profile_snapshot, resolve
from vibe.operator.planning import WRITE, Inputs
from vibe.operator.problems import Problem
from vibe.operator.reconciling import Shared, _compute
from vibe.operator.settings import OperatorSettings
from vibe.operator.workload import Loads
from vibe.placement.synthetic import skewed_loads
from vibe.spec import parse_spec

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)
ROOT = Path(__file__).resolve().parents[2]

#: Over LARGE_UNITS (the large lane), yet quick: ~2 s and ~400 MB when solved in full.
LARGE = {"layers": 256, "experts": 256, "gpus": 64, "slots": 4}
SMALL = {"layers": 4, "experts": 16, "gpus": 8, "slots": 3}


def inputs(layers: int, experts: int, gpus: int, slots: int) -> Inputs:
    model = {"layers": layers, "experts": experts, "topK": 4, "hiddenSize": 7168,
             "expertIntermediateSize": 2048, "dtype": "fp8"}  # fmt: skip
    body = deployment_body("m", count=gpus, slots=slots, model=model, output={"formats": ["sglang"]})
    spec = parse_spec(body["spec"])
    nodes = {f"n{i:03d}": {"pool": "a"} for i in range((gpus + 7) // 8)}
    profiles = {n: profile_snapshot(profile_body(n, gpus=8, memory_bytes=1 << 50)) for n in nodes}
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=NOW, profile_ttl_s=1e9)
    return Inputs(spec, res, Loads(skewed_loads(layers, experts, mean_tokens=512, seed=1), "ns/l:loads.json"))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_the_work_done():
    async def main() -> tuple[Any, list[str], int, int]:
        computer = Computer(1)
        try:
            (pid,) = await computer.lanes["small"].warm()
            os.kill(pid, signal.SIGKILL)  # as an OOM kill would, while idle
            await asyncio.sleep(0.5)
            lost: list[str] = []
            plan, _core = await computer.run(inputs(**SMALL), None, None, NOW, 0.2, on_lost=lost.append)
            (new_pid,) = computer.lanes["small"].pids()
            return plan, lost, computer.lanes["small"].restarts, new_pid != pid
        finally:
            computer.close()

    before = metrics.WORKER_RESTARTS.labels("small")._value.get()
    plan, lost, restarts, replaced = run(main())
    assert plan.action == WRITE and restarts == 1 and replaced
    assert len(lost) == 1 and "died" in lost[0] and "rebuilt" in lost[0]
    assert metrics.WORKER_RESTARTS.labels("small")._value.get() == before + 1


def test_work_that_kills_its_worker_twice_is_not_retried_a_third_time():
    async def main() -> tuple[list[str], Lane]:
        lane = Lane("small", 1, allowance=0, deadline_s=30)
        lost: list[str] = []
        try:
            with pytest.raises(WorkerLost):
                await lane.run(_die, on_lost=lost.append)
            assert await lane.run(os.getpid) > 0  # the rebuilt pool still works
        finally:
            lane.close()
        return lost, lane

    lost, lane = run(main())
    assert lane.restarts == 2 and lane.submitted == 3 and lane.healthy
    assert [("attempt 1 of 2" in m, "retried" in m) for m in lost] == [(True, True), (False, False)]


def test_a_pool_that_cannot_be_rebuilt_makes_the_lane_unhealthy():
    import concurrent.futures
    import multiprocessing

    made = []

    def make_pool() -> concurrent.futures.Executor:
        if made:
            raise OSError(11, "Resource temporarily unavailable (cannot spawn)")
        made.append(1)
        return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    async def main() -> Lane:
        lane = Lane("small", 1, allowance=0, deadline_s=30, make_pool=make_pool)
        try:
            (pid,) = await lane.warm()
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
            with pytest.raises(WorkerLost, match="cannot be rebuilt"):
                await lane.run(os.getpid)
        finally:
            lane.close()
        return lane

    lane = run(main())
    assert not lane.healthy
    assert metrics.COMPUTE_HEALTHY.labels("small")._value.get() == 0


def test_a_solve_over_its_memory_allowance_is_instance_too_large_and_not_retried():
    big = inputs(**LARGE)
    assert spec_units(big.spec) > LARGE_UNITS

    async def main() -> tuple[Problem, Problem, int, Any]:
        computer = Computer(1, large_memory_bytes=64 << 20)
        shared = Shared(settings=OperatorSettings(compute_processes=1), kube=None, computer=computer)  # type: ignore[arg-type]
        body = {"metadata": {"name": "m", "namespace": "ns"}}
        try:
            with pytest.raises(Problem) as first:
                await _compute(shared, ("ns", "m"), body, big, None, {}, NOW)
            submitted = computer.lanes["large"].submitted
            with pytest.raises(Problem) as again:  # same inputs: the known failure, no new solve
                await _compute(shared, ("ns", "m"), body, big, None, {}, NOW)
            assert computer.lanes["large"].submitted == submitted
            small, _ = await computer.run(inputs(**SMALL), None, None, NOW, 0.2)  # the small lane unharmed
            return first.value, again.value, computer.lanes["large"].restarts, small
        finally:
            computer.close()

    first, again, restarts, small = run(main())
    assert first.reason == "InstanceTooLarge" and "memory" in first.message
    assert "256 layers x 256 experts on 64 GPUs x 4 slots" in first.message
    assert again is first and restarts == 0 and small.action == WRITE


def test_a_solve_past_its_deadline_is_killed_and_instance_too_large():
    async def main() -> tuple[Problem, int, Any]:
        computer = Computer(1, large_deadline_s=0.3)
        try:
            with pytest.raises(Problem) as e:
                await computer.run(inputs(**LARGE), None, None, NOW, 1.0)
            small, _ = await computer.run(inputs(**SMALL), None, None, NOW, 0.2)
            return e.value, computer.lanes["large"].restarts, small
        finally:
            computer.close()

    problem, restarts, small = run(main())
    assert problem.reason == "InstanceTooLarge" and "0 s deadline" in problem.message
    assert restarts == 1 and small.action == WRITE


def test_small_deployments_are_not_queued_behind_a_large_solve():
    """One worker per lane: the small solve finishes while the large one is still running (with one
    pool of one worker it would wait for the large one)."""

    async def main() -> list[str]:
        computer = Computer(1)
        done: list[str] = []
        try:
            await computer.warm()

            async def one(name: str, inp: Inputs, delay: float) -> None:
                await asyncio.sleep(delay)
                await computer.run(inp, None, None, NOW, 0.2)
                done.append(name)

            await asyncio.gather(one("large", inputs(**LARGE), 0.0), one("small", inputs(**SMALL), 0.3))
        finally:
            computer.close()
        return done

    assert run(main()) == ["small", "large"]


@pytest.mark.slow
def test_workers_die_with_the_operator(tmp_path: Path):
    script = tmp_path / "op.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from vibe.operator.compute import Computer

            async def main():
                c = Computer(2)
                await c.warm()
                print(" ".join(map(str, c.lanes["small"].pids() + c.lanes["large"].pids())), flush=True)
                await asyncio.sleep(600)

            if __name__ == "__main__":
                asyncio.run(main())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 3 and all(_alive(p) for p in pids)
    finally:
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.wait(10)
    t0 = time.monotonic()
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=10, interval=0.1, what="orphaned workers")
    assert time.monotonic() - t0 < 10


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_lane_serves_tenants_round_robin():
    """Issue 20 weak spot: tenant a queues three solves, then b one, on a one-worker lane. b's runs
    second (after a's first, which holds the worker), not fourth: before, one tenant's solve took 8 s
    alone and 23 s behind another tenant's three."""
    from vibe.operator.compute import FairSlots

    order: list[str] = []

    async def main() -> None:
        slots = FairSlots(1)
        gate = asyncio.Event()

        async def job(tenant: str, name: str) -> None:
            async with slots.hold(tenant):
                order.append(name)
                await gate.wait()

        tasks = [asyncio.create_task(job("a", f"a{i}")) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("b", "b0")))
        cancelled = asyncio.create_task(job("c", "c0"))  # a waiter that goes away frees nothing
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        assert slots.free == 1 and not slots.queues

    asyncio.run(main())
    assert order == ["a0", "b0", "a1", "a2"]
