"""The storm phase of the sidecar benchmark, ranker side: quiet and storm phases of a ranker loop.

`bench/sidecar.py` calls `measure_storm` last: a `RankerLoop` serves requests
(begin -> rank -> to_shown_items -> finish) and is timed per request in quiet
phases and in storm phases, ABBA order.  The changes of a storm come from
`bench/_sidecar_storm.py`'s `StormPublisher`, started and stopped here through
a `StormDriver`: `ProcessStorm` runs it as a child process over stdin/stdout
(the default), `ThreadStorm` on an event-loop thread of this process
(``--storm-producer thread``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from _sidecar_propagation import wait_version
from _sidecar_stats import FloatArray, zipf_users
from _sidecar_storm import KEYS_ENV, StormPlan, StormPublisher, StormRound

from schemas.config_log import Keyring
from serving_sidecar.candidates import CandidateSet, synthetic_candidates
from serving_sidecar.loop_thread import LoopThread
from serving_sidecar.sidecar import Sidecar

STORM_SCRIPT: Final = Path(__file__).resolve().parent / "_sidecar_storm.py"
STORM_SETS: Final = 4


class StormDriver(Protocol):
    """Starts and stops storms of config changes (a child process, or a thread of this process)."""

    def go(self) -> None: ...

    def stop(self) -> StormRound: ...

    def close(self) -> None: ...


class ProcessStorm:
    """The storm publisher in its own process (`bench/_sidecar_storm.py`), driven over stdin/stdout."""

    def __init__(self, plan: StormPlan, keys_spec: str, timeout_s: float = 60.0) -> None:
        env = dict(os.environ)
        env[KEYS_ENV] = keys_spec
        self._timeout_s = timeout_s
        self._proc = subprocess.Popen(
            [sys.executable, str(STORM_SCRIPT), plan.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        if self._read() != "ready":
            msg = "the storm publisher did not start"
            raise RuntimeError(msg)

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        return stdin, stdout

    def _read(self) -> str:
        _, stdout = self._pipes()
        ready, _, _ = select.select([stdout], [], [], self._timeout_s)
        line = stdout.readline() if ready else ""
        if not line:
            msg = f"the storm publisher gave no answer (exit code {self._proc.poll()})"
            raise RuntimeError(msg)
        return line.strip()

    def _send(self, command: str) -> None:
        stdin, _ = self._pipes()
        stdin.write(command + "\n")
        stdin.flush()

    def go(self) -> None:
        self._send("go")

    def stop(self) -> StormRound:
        self._send("stop")
        return StormRound.from_json(self._read())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send("quit")
        try:
            self._proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class ThreadStorm:
    """The storm publisher on a private event-loop thread of this process."""

    def __init__(self, plan: StormPlan, keyring: Keyring) -> None:
        self._thread = LoopThread("bench-storm").start()
        self._publisher = StormPublisher(plan, keyring)
        self._thread.run(self._publisher.start(), 60.0)
        self._stop: asyncio.Event | None = None
        self._future: Any = None

    def go(self) -> None:
        async def begin() -> asyncio.Event:
            return asyncio.Event()

        stop = self._thread.run(begin(), 10.0)
        self._stop = stop
        self._future = self._thread.submit(self._publisher.run(stop))

    def stop(self) -> StormRound:
        assert self._stop is not None
        self._thread.loop.call_soon_threadsafe(self._stop.set)
        result: StormRound = self._future.result(30.0)
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._thread.run(self._publisher.close(), 10.0)
        self._thread.stop()


@dataclass(frozen=True, slots=True)
class Phase:
    """One timed phase of the ranker loop."""

    kind: str  # "quiet" or "storm"
    latency_ms: FloatArray
    cpu_ms: FloatArray  # the request thread's CPU time (no preemption, no GIL waits)
    preempted: npt.NDArray[np.bool_]  # the request saw >= 1 involuntary context switch
    swapped: npt.NDArray[np.bool_]  # a config swap happened while the request ran
    duration_s: float
    swaps: int
    storm: StormRound | None


class RankerLoop:
    """A synchronous ranker: begin -> rank -> to_shown_items -> finish, one request after another."""

    def __init__(self, sidecar: Sidecar, args: argparse.Namespace) -> None:
        rng = np.random.default_rng(args.seed + 3)
        self.sidecar = sidecar
        self.sets: list[CandidateSet] = [synthetic_candidates(args.storm_candidates, rng) for _ in range(STORM_SETS)]
        self.users = zipf_users(args.storm_requests * (2 * args.storm_rounds + 1), args.users, rng, "storm")
        self.rng = np.random.default_rng(args.seed + 4)
        self._next = 0

    def run_for(self, seconds: float) -> None:
        """Serve requests, untimed, for `seconds`."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.run(10)

    def run(self, n: int) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Serve `n` requests; per request: wall and thread CPU ms (begin to finish), preempted?, swap during it?"""
        sidecar, sets, rng, users = self.sidecar, self.sets, self.rng, self.users
        clock, cpu_clock = time.perf_counter, time.thread_time_ns
        out = np.empty(n, dtype=np.float64)
        cpu = np.empty(n, dtype=np.float64)
        preempted = np.zeros(n, dtype=np.bool_)
        swapped = np.zeros(n, dtype=np.bool_)
        holder = sidecar.holder
        usage, who = resource.getrusage, resource.RUSAGE_THREAD
        for i in range(n):
            candidates = sets[self._next % STORM_SETS]
            uid = users[self._next % len(users)]
            self._next += 1
            switches = usage(who).ru_nivcsw
            swaps = holder.swaps
            c0 = cpu_clock()
            t0 = clock()
            request = sidecar.begin(uid, surface="home", cohort="returning")
            ranked = sidecar.rank(request, candidates, rng)
            items = ranked.to_shown_items(candidates)
            sidecar.finish(request, items, latency_ms=(clock() - t0) * 1000.0)
            out[i] = (clock() - t0) * 1000.0
            cpu[i] = (cpu_clock() - c0) / 1e6
            preempted[i] = usage(who).ru_nivcsw > switches
            swapped[i] = holder.swaps != swaps
        return out, cpu, preempted, swapped


def measure_storm(sidecar: Sidecar, loop: RankerLoop, driver: StormDriver, args: argparse.Namespace) -> list[Phase]:
    """Quiet and storm phases in ABBA order, each after an unmeasured lead-in of `--storm-lead-s`.

    A storm starts before its lead-in (so changes are already landing when
    timing starts); after its measured requests it is stopped and the last
    change is awaited, so no swap leaks into the next phase.
    """
    order: list[str] = []
    for r in range(args.storm_rounds):
        order += ["quiet", "storm"] if r % 2 == 0 else ["storm", "quiet"]
    loop.run(max(args.storm_requests // 2, 50))  # warm-up
    phases: list[Phase] = []
    for kind in order:
        gc.collect()
        if kind == "storm":
            driver.go()
        loop.run_for(args.storm_lead_s)
        swaps0 = sidecar.holder.swaps
        t0 = time.perf_counter()
        latency, cpu, preempted, hit = loop.run(args.storm_requests)
        duration = time.perf_counter() - t0
        swaps = sidecar.holder.swaps - swaps0
        storm: StormRound | None = None
        if kind == "storm":
            storm = driver.stop()
            wait_version(sidecar, storm.last_version)
        phases.append(Phase(kind, latency, cpu, preempted, hit, duration, swaps, storm))
    return phases
