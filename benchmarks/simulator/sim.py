"""One simulation run: the router (requests to ready instances, or waiting for a placement),
instance life (load, serve, stop) and the storage side of every load, driven by the event
loop; the scheduler's decisions come from `control`."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections import defaultdict, deque
from collections.abc import Iterator

from services.scheduler.calibration import LoadSample
from services.scheduler.placement import Estimate
from services.scheduler.prefetch import NodeState, prefetch_targets

from . import storage
from .cluster import Node, build_cluster
from .control import SimScheduler
from .events import EventLoop
from .llms import SimModel
from .scenario import Arrival, ColdStartRecord, RequestRecord, Result, Scenario
from .serving import Instance, Request, service_times
from .systems import SYSTEMS
from .views import Views


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        system = SYSTEMS[scenario.system]
        if scenario.baseline_loader is not None and system.loader_efficiency != 1.0:
            system = dataclasses.replace(system, loader_efficiency=scenario.baseline_loader)
        self.system = system
        self.scaling = scenario.scaling
        self.loop = EventLoop()
        self.nodes = build_cluster(
            scenario.nodes,
            scenario.hardware,
            dram_tier=self.system.dram_tier,
            ssd_cache=self.system.ssd_cache,
        )
        self.node_of = {n.node_id: n for n in self.nodes}
        self.workers = {w.worker_id: w for n in self.nodes for w in n.workers}
        self.free_count = len(self.workers)
        self.models = {m.name: m for m in scenario.models}
        self.views = Views(self.nodes, self.system, exact=scenario.exact)
        self.instances: dict[str, Instance] = {}
        self.live: dict[str, list[Instance]] = defaultdict(list)
        self.waiting: dict[str, deque[Request]] = {}
        self.in_flight: dict[str, int] = defaultdict(int)
        self.active: set[str] = set()
        self.result = Result(self.system.name)
        self.scheduler = SimScheduler(self)
        self.outstanding = 0
        self._ids = itertools.count()
        self._arrivals: Iterator[Arrival] = iter(())
        self._more_arrivals = False
        self._rids = itertools.count()

    # --- tier changes (`storage.TierEvents`) -----------------------------------------------

    def added(self, node: Node, tier: str, model: str) -> None:
        self.views.holders.setdefault(model, set()).add(node.index)

    def evicted(self, node: Node, tier: str, model: str) -> None:
        self.result.evictions += 1
        if not any(c is not None and model in c.entries for c in (node.dram, node.ssd)):
            self.views.holders.get(model, set()).discard(node.index)

    # --- deploy ----------------------------------------------------------------------------

    def deploy(self) -> None:
        """Prefetch on deploy (`prefetch.prefetch_targets`), for systems that do it."""
        replicas = self.system.prefetch_replicas
        if replicas <= 0:
            return
        base = [self._node_state(n, "") for n in self.nodes]
        for model in self.scenario.models:
            holders = self.views.holders.get(model.name, set())
            here = [
                self._node_state(self.nodes[i], model.name) if i in holders else s
                for i, s in enumerate(base)
            ]
            for nid in prefetch_targets(model.name, model.bytes, here, replicas):
                node = self.node_of[nid]
                storage.prefetch(node, model.name, model.bytes, self)
                base[node.index] = self._node_state(node, "")

    def _node_state(self, node: Node, model: str) -> NodeState:
        dram = node.dram
        return NodeState(
            node.node_id,
            workers=len(node.workers),
            free_workers=node.free_workers,
            dram_capacity=dram.capacity or 0 if dram else 0,
            dram_used=dram.used if dram else 0,
            holds_dram=bool(dram and model in dram.entries),
            holds_ssd=bool(node.ssd and model in node.ssd.entries),
        )

    # --- the router -------------------------------------------------------------------------

    def demand(self, model: str) -> tuple[int, int, float | None]:
        """(requests held: in flight + waiting, waiting, oldest waiting arrival)."""
        w = self.waiting.get(model)
        queued = len(w) if w else 0
        return self.in_flight[model] + queued, queued, w[0].arrival if w else None

    def _next_arrival(self) -> None:
        a = next(self._arrivals, None)
        if a is None:
            self._more_arrivals = False
            return
        self.loop.at(a.at_s, lambda: self._arrive(a))

    def _arrive(self, a: Arrival) -> None:
        self._next_arrival()
        model = self.models[a.model]
        req = Request(next(self._rids), model, self.loop.now, a.prompt_tokens, a.output_tokens)
        self.outstanding += 1
        self.active.add(model.name)
        self.scheduler.touch(model.name)
        ready = [i for i in self.live[model.name] if i.status == "ready" and not i.stopping]
        if ready:
            self._dispatch(req, min(ready, key=lambda i: (i.load, i.instance_id)))
        else:
            q = self.waiting.setdefault(model.name, deque())
            q.append(req)
            if len(q) == 1:
                self.scheduler.wake_now()  # requests start waiting for the model
            self.scheduler.place(model)
        self.scheduler.demand_changed(model.name)

    def _dispatch(self, req: Request, inst: Instance) -> None:
        req.instance = inst
        self.in_flight[req.model.name] += 1
        if len(inst.running) < inst.slots:
            self._admit(req, inst)
        else:
            inst.queue.append(req)

    def _admit(self, req: Request, inst: Instance) -> None:
        now = self.loop.now
        req.start = now
        req.first_token, req.done_at = service_times(req, now)
        inst.running[req.rid] = req
        req.done_event = self.loop.at(req.done_at, lambda: self._done(req))

    def _done(self, req: Request) -> None:
        inst = req.instance
        assert inst is not None
        assert req.first_token is not None
        del inst.running[req.rid]
        self.in_flight[req.model.name] -= 1
        self.outstanding -= 1
        self.scheduler.touch(req.model.name)
        cold = req.start is not None and req.start > req.arrival + 1e-9
        self.result.requests.append(
            RequestRecord(req.rid, req.model.name, req.arrival, req.ttft, self.loop.now, cold)
        )
        if inst.queue:
            self._admit(inst.queue.popleft(), inst)
        self.scheduler.demand_changed(req.model.name)
        if not inst.busy:
            self._idle(inst)
        if self.outstanding == 0 and not self._more_arrivals:
            self.loop.stop()

    def _idle(self, inst: Instance) -> None:
        now = self.loop.now
        self.scheduler.touch(inst.model.name)
        inst.idle_since = now
        inst.keep_until = now + self.scaling.keep_alive_s
        self.scheduler.on_idle(inst)
        name = inst.model.name
        if inst in self.live[name] and self.scheduler.surplus_or_starved(name):
            self.scheduler.wake_now()

    # --- instances --------------------------------------------------------------------------

    def start_instance(self, model: SimModel, choice: Estimate, why: str, how: str) -> Instance:
        """Reserve ``choice``'s worker, begin the load, and record the placement."""
        now = self.loop.now
        worker = self.workers[choice.worker_id]
        node = self.node_of[choice.node_id]
        assert worker.free, f"{worker.worker_id} is not free"
        iid = f"i{next(self._ids):06d}"
        inst = Instance(iid, model, worker, node, now, choice.seconds, self.scenario.slots)
        worker.instance = iid
        self.free_count -= 1
        node.recount()
        self.instances[iid] = inst
        self.live[model.name].append(inst)
        self.active.add(model.name)
        self.scheduler.touch(model.name)
        in_use = {
            self.instances[w.instance].model.name
            for w in node.workers
            if w.instance and w.instance != iid
        }
        tl = storage.load(node, model.name, model.bytes, now, self.system, in_use, self)
        self.result.cold_starts.append(
            ColdStartRecord(
                now,
                model.name,
                node.node_id,
                worker.worker_id,
                tl.source,
                choice.tier,
                choice.seconds,
                tl.seconds,
                why,
                how,
            )
        )
        sample = LoadSample(model.bytes, tl.data_s, tl.fixed_s)
        self.loop.after(tl.seconds, lambda: self._ready(inst, tl.source, sample))
        return inst

    def _ready(self, inst: Instance, tier: str, sample: LoadSample) -> None:
        if inst.instance_id not in self.instances:
            return  # stopped while loading
        self.views.calibration.record(tier, sample)
        inst.status = "ready"
        self.scheduler.touch(inst.model.name)
        name = inst.model.name
        q = self.waiting.get(name)
        if q:
            ready = [i for i in self.live[name] if i.status == "ready" and not i.stopping]
            while q:
                self._dispatch(q.popleft(), min(ready, key=lambda i: (i.load, i.instance_id)))
            del self.waiting[name]
        if not inst.busy:
            self._idle(inst)
        self.scheduler.on_ready(inst)
        self.scheduler.wake_now()

    def stop_instance(self, inst: Instance, reason: str) -> None:
        """Unload ``inst`` (the caller checked it may go) and free its worker."""
        now = self.loop.now
        self.instances.pop(inst.instance_id, None)
        self.live[inst.model.name].remove(inst)
        self.scheduler.touch(inst.model.name)
        inst.worker.instance = ""
        self.free_count += 1
        inst.node.recount()
        self.result.gpu_seconds += now - inst.placed_at
        self.scheduler.wake_now()

    def move_requests(self, src: Instance, dst: Instance, pause_s: float) -> None:
        """A live migration's hand-over: every generation of ``src`` continues on ``dst``
        after a pause of ``pause_s`` (its remaining tokens at the same pace)."""
        self.scheduler.touch(dst.model.name)
        for req in list(src.running.values()):
            del src.running[req.rid]
            if req.done_event is not None:
                req.done_event.cancel()
            assert req.done_at is not None
            req.done_at += pause_s
            req.instance = dst
            req.migrated += 1
            dst.running[req.rid] = req
            req.done_event = self.loop.at(req.done_at, functools.partial(self._done, req))
        while src.queue:
            req = src.queue.popleft()
            req.instance = dst
            if len(dst.running) < dst.slots:
                self._admit(req, dst)
            else:
                dst.queue.append(req)

    # --- running ----------------------------------------------------------------------------

    def run(self) -> Result:
        t0, c0 = time.perf_counter(), time.process_time()
        self.deploy()
        arrivals = sorted(self.scenario.arrivals, key=lambda a: (a.at_s, a.model))
        self._arrivals = iter(arrivals)
        self._more_arrivals = True
        self._next_arrival()
        if not arrivals:
            self._more_arrivals = False
        self.loop.run(until=self.scenario.horizon_s)
        end = self.loop.now
        for inst in list(self.instances.values()):
            self.result.gpu_seconds += end - inst.placed_at
        self.result.end_s = end
        self.result.events = self.loop.fired
        self.result.wall_s = time.perf_counter() - t0
        self.result.cpu_s = time.process_time() - c0
        return self.result


def simulate(scenario: Scenario) -> Result:
    """Run ``scenario`` to the end (every request answered, or the horizon)."""
    return Simulation(scenario).run()
