"""Drive an engine over a workload: arrivals on the engine's clock, one step at a time, in a
background thread when live, publishing each step to the run's subscribers."""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmlab.core.records import Completion, DecodeRun, RequestRecord, StepRecord
from llmlab.engines.base import EngineCore, EngineStep
from llmlab.session.run import Run
from llmlab.session.trace import Trace
from llmlab.workloads import WorkItem, Workload

IDLE_POLL_S = 0.02


class Session:
    """Feeds a workload's requests to an engine as they arrive and records what happens."""

    def __init__(self, engine: EngineCore, workload: Workload, on_end: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.workload = workload
        self.on_end = on_end  # told when the run ends, whatever happened (the user's Engine frees the core)
        self.driver: threading.Thread | None = None  # the thread driving the run, once started
        # validate and tokenize everything up front: a bad request fails before anything runs
        self.prepared: list[tuple[WorkItem, list[int], object]] = []
        seen: set[str] = set()
        for item in sorted(workload.items, key=lambda i: i.arrival):
            if item.req_id in seen:
                raise ValueError(
                    f"request id {item.req_id!r} appears twice in workload {workload.name!r}: ids must be unique"
                )
            seen.add(item.req_id)
            ids = engine.encode(item)
            params = engine.params_for(item)
            engine.check_request(item.req_id, ids, params)
            self.prepared.append((item, ids, params))
        self.run = Run(Trace(engine.info), total=len(self.prepared))

    def start(self, live: bool) -> Run:
        """Drive the run, in a background thread when `live` (`driver` is the thread that drives it).
        The caller holds the engine's `busy` lock; `on_end` is told when the run ends."""
        run = self.run
        if not live:
            self.driver = threading.current_thread()
            run.started()
            self._drive()  # Ctrl-C: the run ends "stopped" (run.error the KeyboardInterrupt), then it re-raises
            return run
        self.driver = threading.Thread(target=self._drive, name=f"llmlab-{self.engine.name}-run", daemon=True)
        run.started(self.driver)
        self.driver.start()
        return run

    def _drive(self) -> None:
        # a simulated run allocates millions of small objects and frees them in order: the cyclic
        # garbage collector only slows it down (about 1.5x on the Azure trace), so it pauses
        paused_gc = self.engine.virtual_clock and gc.isenabled()
        if paused_gc:
            gc.disable()
        try:
            self._drive_steps()
        finally:
            if paused_gc:
                gc.enable()

    def _drive_steps(self) -> None:
        engine, run, trace = self.engine, self.run, self.run.trace
        pending = deque(self.prepared)
        closed = self.workload.concurrency  # users in a closed loop, or None for open-loop arrivals
        limit = closed or len(pending) or 1
        in_flight: set[str] = set()
        # an engine that can compute several steps at once (the simulator) offers a fast path
        fast = getattr(engine, "fast_path", None)
        t0 = engine.now()
        step = 0

        def add_arrivals(clock: float) -> None:
            """Hand the engine every request that has arrived by `clock` (or, in a closed loop,
            as many as there are free users)."""
            while pending and len(in_flight) < limit and (closed or t0 + pending[0][0].arrival <= clock):
                item, ids, params = pending.popleft()
                in_flight.add(item.req_id)  # first: if adding is interrupted, the cleanup still aborts it
                engine.add_request(item.req_id, ids, params)
                # an open-loop request arrived at its own time, even if a step was running then
                arrival = clock - t0 if closed else item.arrival
                trace.add_request(RequestRecord(item.req_id, arrival=arrival, prompt_tokens=len(ids)))

        def arrive(clock: float) -> float | None:
            """For an engine that steps on past an arrival: add the arrivals, say when the next is."""
            add_arrivals(clock)
            return t0 + pending[0][0].arrival if pending else None

        try:
            while (pending or engine.has_unfinished()) and not run.stop_requested:
                clock = engine.now()
                now = clock - t0
                add_arrivals(clock)
                if not engine.has_unfinished():
                    wait = pending[0][0].arrival - now
                    if engine.virtual_clock:
                        engine.advance_to(t0 + pending[0][0].arrival)
                    else:
                        time.sleep(min(max(wait, 0.0), IDLE_POLL_S))
                    continue
                # the next arrival, on the engine's clock: a multi-step call must not run past it
                until = t0 + pending[0][0].arrival if pending and not closed else None
                # in a closed loop every finish lets the next request in, so a run must stop at one
                past_finishes = not (pending and closed)
                ts = engine.now()
                if fast is not None:
                    outs = fast.advance(until, past_finishes, None if closed else arrive)
                else:
                    outs = [engine.step()]
                for out in outs:
                    ts = self._record(out, step, ts, t0, in_flight)
                    step += out.record.num_steps
            run.status = "stopped" if run.stop_requested else "finished"
        except Exception as exc:  # the run fails; the engine must stay usable
            run.error = exc
            run.status = "failed"
        except KeyboardInterrupt as exc:  # Ctrl-C in a blocking run: it stops, and the user sees the interrupt
            run.error = exc
            run.status = "stopped"
            raise
        except BaseException as exc:  # SystemExit and the like: recorded, cleaned up, passed on
            run.error = exc
            run.status = "failed"
            raise
        finally:
            self._cleanup(in_flight)

    def _cleanup(self, in_flight: set[str]) -> None:
        """Abort the requests still in flight (their KV blocks go back to the pool), mark them
        aborted in the trace, and hand the engine back, whatever happened."""
        engine, run = self.engine, self.run
        records = run.trace.request_records
        try:
            for req_id in in_flight - set(run.trace.outputs):
                try:
                    engine.abort(req_id)
                except Exception:
                    pass
                r = records.get(req_id)
                if r is not None and r.finish_reason is None:
                    r.finish_reason = "abort"
        finally:
            if self.on_end is not None:
                self.on_end()
            run.ended()

    def _record(self, out: EngineStep, step: int, start: float, t0: float, in_flight: set[str]) -> float:
        """Stamp one step, or a `DecodeRun` of several, that began at `start` on the engine's clock
        with its index and times; credit each request its scheduling, tokens, preemptions and
        finish; hand it to the trace and the subscribers. Returns when it ended (engine clock)."""
        rec, run = out.record, self.run
        records = run.trace.request_records
        stretch = _Stretch.of(out, self.engine.now())
        rec.step, rec.t_start = step, start - t0
        ends = [t - t0 for t in stretch.t_ends]
        stretch.stamp(ends)
        for req_id, j in stretch.scheduled:
            r = records[req_id]
            if r.first_scheduled is None:
                r.first_scheduled = ends[j - 1] if j else rec.t_start
        for req_id, first, n, per_step in stretch.tokens:
            r = records[req_id]
            times = ends[first : first + n] if per_step == 1 else [ends[first]] * per_step
            r.token_times.extend(times)
            r.output_tokens += len(times)
            if r.first_token is None and times:
                r.first_token = times[0]
        for req_id in stretch.preempted:
            records[req_id].num_preemptions += 1
        for c, j in zip(out.finished, stretch.finish_steps, strict=True):
            self._finish(c, ends[j - 1], in_flight, out.errors.get(c.req_id))
        run.trace.add_step(rec)
        if run.watched:
            for r in stretch.expand():
                run.publish(r)
        return stretch.t_ends[-1]

    def _finish(self, c: Completion, te: float, in_flight: set[str], error: str | None = None) -> None:
        """Record a request that finished in a step that ended at `te` (with `error`: it failed alone)."""
        trace = self.run.trace
        r = trace.request_records[c.req_id]
        r.finish, r.finish_reason, r.cached_tokens = te, c.finish_reason, c.cached_tokens
        if error is not None:
            r.error = error
        trace.add_output(c)
        in_flight.discard(c.req_id)


@dataclass
class _Stretch:
    """What the session records of an engine's result, alike for one step and a `DecodeRun`:
    step ends on the engine's clock; who was first scheduled in step j; who got tokens, as
    (req_id, first step, steps, tokens each step); who was preempted; in which step (from 1)
    each finished request ended."""

    record: StepRecord | DecodeRun
    t_ends: list[float]
    scheduled: list[tuple[str, int]]
    tokens: list[tuple[str, int, int, int]]
    preempted: list[str]
    finish_steps: list[int]

    @classmethod
    def of(cls, out: EngineStep, now: float) -> _Stretch:
        """The stretch of `out`; a single step ends at `now`."""
        rec = out.record
        if isinstance(rec, DecodeRun):
            prefills = zip(rec.prefills, rec.prefill_at, rec.prefill_samples, strict=True)
            tokens = [(slot.req_id, j, 1, 1) for slot, j, samples in prefills if samples]  # prompts done first
            tokens += [(r, f, n, 1) for r, f, n in zip(rec.req_ids, rec.firsts(), rec.steps, strict=True)]
            scheduled = [(slot.req_id, j) for slot, j in zip(rec.prefills, rec.prefill_at, strict=True)]
            return cls(rec, rec.t_ends, scheduled, tokens, [], rec.finish_steps())
        scheduled = [(slot.req_id, 0) for slot in rec.batch]
        tokens = [(req_id, 0, 1, n) for req_id, n in out.new_tokens.items()]
        return cls(rec, [now], scheduled, tokens, rec.preempted, [1] * len(out.finished))

    def stamp(self, ends: list[float]) -> None:
        """Write the step ends (seconds since the run started) into the record."""
        if isinstance(self.record, DecodeRun):
            self.record.t_ends = ends
        else:
            self.record.t_end = ends[0]

    def expand(self) -> list[StepRecord]:
        """One `StepRecord` per step."""
        return self.record.expand() if isinstance(self.record, DecodeRun) else [self.record]
