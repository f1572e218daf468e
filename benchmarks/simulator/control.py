"""The scheduler, simulated: the decisions are the real scheduler's pure functions
(`place_policy.decide`, `placement.rank` / `round_robin`, `coldpolicy.contenders` / `weigh`,
`autoscaler.plan`), fed with inputs built as `place_handler`, `coldstart` and `scaling` build
them; carrying them out (reserving a worker, waiting, migrating, stopping) is the simulation's."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.scheduler.autoscaler import (
    InstanceView,
    ModelView,
    Snapshot,
    desired_instances,
    plan,
    remaining_load_s,
)
from services.scheduler.coldpolicy import Bounds, contenders, costs_of, weigh
from services.scheduler.coldstart import WAIT_SLACK_S
from services.scheduler.migration_policy import Option, Running, plan_migration
from services.scheduler.place_policy import (
    ColdStart,
    Loading,
    PlaceView,
    StartBeside,
    WaitTurn,
    decide,
)
from services.scheduler.placement import DEFAULT_BANDWIDTH, Estimate, rank, round_robin
from services.scheduler.scaling import DEMAND_SETTLE_S

from .autoscale_view import AutoscaleView
from .events import Event
from .llms import SimModel
from .serving import Instance

if TYPE_CHECKING:
    from .sim import Simulation

# `SLLM_DEFAULT_MODEL_GB`'s default: the size assumed before any node has stored a model.
DEFAULT_BYTES = 1_000_000_000
# `SLLM_COLD_START_WAIT_LIMIT`'s default.
WAIT_LIMIT_S = 120.0


@dataclass
class Pending:
    """A cold start waiting for a busy worker, or migrating its generations away first."""

    model: SimModel
    option: Option
    source: Instance
    timeout: Event | None = None
    destination: Instance | None = None


class SimScheduler:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.starved: dict[str, float] = {}
        self.turn = 0
        self.pending: dict[str, Pending] = {}
        self.bounds = Bounds()
        self._step: Event | None = None
        self._desired: dict[str, int] = {}
        self.index = AutoscaleView(self.classify)
        self._surplus: set[str] = set()  # models above their desired count at the last step
        self._views: dict[str, ModelView] = {}  # until the model is touched

    def touch(self, model: str) -> None:
        """Something about ``model`` changed (demand, an instance, a start under way)."""
        self.index.touch(model)
        self._views.pop(model, None)

    # --- placement ------------------------------------------------------------------------

    def rank(self, model: str, worker_id: str = "") -> list[Estimate]:
        """`Placer.rank` over the candidate nodes (with ``worker_id``'s node, when a
        placement must go there: an estimate depends on its own node only)."""
        views, now = self.sim.views, self.sim.loop.now
        c = views.candidates(model, now)
        free, known = c.free, c.known
        if worker_id:
            node = self.sim.node_of[self.sim.workers[worker_id].node_id]
            free = [node]
            known = [*known, node]
        return rank(
            model,
            views.workers(free),
            views.views(known, now),
            default_bytes=DEFAULT_BYTES,
            priors=DEFAULT_BANDWIDTH,
        )

    def _choose(self, model: str, ranked: list[Estimate], worker_id: str) -> Estimate | None:
        """`Placer._candidates`: the first free worker by the configured policy."""
        if self.sim.system.placement == "round_robin":
            views, now = self.sim.views, self.sim.loop.now
            turn, self.turn = self.turn, self.turn + 1
            if worker_id:
                workers = [w for w in views.workers(self.sim.nodes) if w.worker_id == worker_id]
            elif self.sim.scenario.exact:
                workers = views.workers(self.sim.nodes)
            else:
                workers, turn = views.round_robin_window(turn)
            # Every node holding the model (its size) and the workers' own nodes.
            known = {n.index: n for n in views.candidates(model, now).known}
            known.update((n.index, n) for n in (self.sim.node_of[w.node_id] for w in workers))
            nodes = views.views((known[i] for i in sorted(known)), now)
            out = round_robin(
                model, workers, nodes, turn, default_bytes=DEFAULT_BYTES, priors=DEFAULT_BANDWIDTH
            )
        else:
            out = [e for e in ranked if not worker_id or e.worker_id == worker_id]
        return out[0] if out else None

    def place_new(
        self,
        model: SimModel,
        why: str,
        worker_id: str = "",
        how: str = "elsewhere",
        ranked: list[Estimate] | None = None,
    ) -> Instance | None:
        """A new instance on the best free worker (only ``worker_id``, when given)."""
        if ranked is None or worker_id:
            ranked = self.rank(model.name, worker_id)
        choice = self._choose(model.name, ranked, worker_id)
        if choice is None:
            return None
        return self.sim.start_instance(model, choice, why, how)

    def place(self, model: SimModel) -> None:
        """A router's placement request for ``model`` (`PlaceHandler.place`), made when it
        has no ready instance."""
        sim, now = self.sim, self.sim.loop.now
        live = [i for i in sim.live[model.name] if not i.stopping]
        ready = [i for i in live if i.status == "ready"]
        ranked = [] if ready else self.rank(model.name)
        waiting = sim.waiting.get(model.name)
        view = PlaceView(
            model=model.name,
            max_instances=sim.scaling.max_instances,
            ready=[i.instance_id for i in ready],
            loading=[
                Loading(i.instance_id, remaining_load_s(i.estimated_s, i.placed_at, now))
                for i in live
                if i.status == "loading"
            ],
            free_workers=sim.free_count,
            waiting_since=waiting[0].arrival if waiting else None,
            starved=dict(self.starved),
            best_new_s=ranked[0].seconds if ranked else None,
        )
        decision = decide(view)
        if isinstance(decision, StartBeside):
            self.place_new(model, "beside", ranked=ranked)
        elif isinstance(decision, ColdStart):
            self.cold_start(model, "cold", ranked)
        elif isinstance(decision, WaitTurn):
            self.wake_now()  # the autoscaler starts it when its turn comes

    # --- cold starts with a busy best worker (`BusyWorkerStarts.start`) --------------------

    def cold_start(self, model: SimModel, why: str, ranked: list[Estimate] | None = None) -> None:
        if model.name in self.pending:
            return
        if ranked is None:
            ranked = self.rank(model.name)
        sim, now = self.sim, self.sim.loop.now
        if not sim.system.migration:
            self.place_new(model, why, ranked=ranked)
            return
        views = sim.views
        c = views.candidates(model.name, now)
        busy, best_free = contenders(
            model.name,
            views.workers(c.contenders),
            views.views(c.known, now),
            default_bytes=DEFAULT_BYTES,
            priors=DEFAULT_BANDWIDTH,
            ranked=ranked,
        )
        if not busy or best_free is None:
            self.place_new(model, why, ranked=ranked)
            return
        replies = []
        for est in busy:
            inst = sim.instances.get(sim.workers[est.worker_id].instance)
            if inst is not None and not sim.workers[est.worker_id].reserved_for:
                replies.append((est, inst.running_reply(now)))
        # Every model a migration could move must see its own candidate destinations.
        needed = sorted({model.name, *(r.model for _, r in replies)})
        pool = {n.index: n for n in c.contenders}
        known = {n.index: n for n in c.known}
        for m in needed:
            cm = views.candidates(m, now)
            pool.update((n.index, n) for n in cm.free)
            known.update((n.index, n) for n in cm.known)
        known.update(pool)
        options = weigh(
            model.name,
            replies,
            views.workers(pool[i] for i in sorted(pool)),
            views.views((known[i] for i in sorted(known)), now),
            default_bytes=DEFAULT_BYTES,
            priors=DEFAULT_BANDWIDTH,
            bounds=self.bounds,
            ranked=ranked,
        )
        if not options or options[0].kind == "elsewhere":
            wid = options[0].worker_id if options else ""
            self.place_new(model, why, worker_id=wid, ranked=ranked)
            return
        choice = options[0]
        source = sim.instances[sim.workers[choice.worker_id].instance]
        p = Pending(model, choice, source)
        self.pending[model.name] = p
        self.touch(model.name)
        source.worker.reserved_for = model.name
        source.node.recount()
        if choice.kind == "wait":
            sim.result.waits += 1
            limit = min(2 * choice.startup_s + WAIT_SLACK_S, WAIT_LIMIT_S)
            p.timeout = sim.loop.after(limit, lambda: self._finish(model.name, freed=False))
            if not source.busy:
                self.on_idle(source)
            return
        dest = self.place_new(source.model, "migration", worker_id=choice.destination)
        if dest is None:
            self._finish(model.name, freed=False)
            return
        p.destination = dest

    def on_idle(self, inst: Instance) -> None:
        """An instance has nothing left to do: a cold start waiting for its worker takes it."""
        p = self.pending.get(inst.worker.reserved_for)
        if p is not None and p.option.kind == "wait" and p.source is inst:
            self.sim.stop_instance(inst, "preempted")
            self._finish(p.model.name, freed=True)

    def on_ready(self, inst: Instance) -> None:
        """A migration's destination has loaded: recompute, catch up, hand over."""
        for p in self.pending.values():
            if p.destination is inst:
                reply = p.source.running_reply(self.sim.loop.now)
                costs = costs_of(reply, self.bounds)
                running = [
                    Running(g.request_id, g.context_tokens, g.remaining_tokens)
                    for g in reply.generations
                ]
                # The generations under way now (not those of the decision) are the ones
                # that move: `free_source=True`.
                migrate_s = plan_migration(running, costs).migrate_s if costs and running else 0.0
                self.sim.loop.after(migrate_s, functools.partial(self._hand_over, p))
                return

    def _hand_over(self, p: Pending) -> None:
        if self.pending.get(p.model.name) is not p or p.destination is None:
            return
        self.sim.move_requests(p.source, p.destination, p.option.pause_s)
        self.sim.stop_instance(p.source, "migrated")
        self.sim.result.migrations += 1
        self._finish(p.model.name, freed=True)

    def _finish(self, model: str, *, freed: bool) -> None:
        p = self.pending.pop(model, None)
        if p is None:
            return
        self.touch(model)
        if p.timeout is not None:
            p.timeout.cancel()
        p.source.worker.reserved_for = ""
        p.source.node.recount()
        if self.sim.live[model]:
            return  # another start got there first
        how = p.option.kind
        started = None
        if freed:
            started = self.place_new(p.model, "cold", worker_id=p.option.worker_id, how=how)
        if started is None:
            started = self.place_new(p.model, "cold", how="elsewhere")
        self.wake_now()

    # --- the autoscaler (`ScaleLoop.step`) -------------------------------------------------

    def wake_now(self) -> None:
        self.wake_at(self.sim.loop.now)

    def wake_soon(self) -> None:
        self.wake_at(self.sim.loop.now + DEMAND_SETTLE_S)

    def wake_at(self, t: float) -> None:
        if self._step is not None and not self._step.cancelled:
            if self._step.at <= t:
                return
            self._step.cancel()
        self._step = self.sim.loop.at(t, self.step)

    def demand_changed(self, model: str) -> None:
        """`ScaleLoop._matters`: wake at once when requests start or stop waiting (handled by
        the caller), after the settling delay when only the desired count moved."""
        want = desired_instances(self.sim.demand(model)[0], self.sim.scaling)
        if want != self._desired.get(model, 0):
            self._desired[model] = want
            self.wake_soon()

    def surplus_or_starved(self, model: str) -> bool:
        """`ScaleLoop._on_idle`: an idle instance matters when its model has more instances
        than it wants, or some model waits for a worker."""
        return model in self._surplus or bool(self.starved)

    def classify(self, name: str) -> tuple[str, float]:
        """For `AutoscaleView`: what ``name`` is to the autoscaler now."""
        sim = self.sim
        live = sim.live[name]
        requests, _, _ = sim.demand(name)
        if not live and requests == 0 and name not in self.pending:
            return "gone", 0.0
        have = len(live) + (1 if name in self.pending and not live else 0)
        want = desired_instances(requests, sim.scaling)
        if want == have:
            return "inert", 0.0
        if want > have or want > 0 or name in self.pending:
            return "hot", 0.0
        idle = [i.keep_until for i in live if i.status == "ready" and not i.busy]
        return "quiet", min(idle, default=math.inf)

    def _model_view(self, name: str) -> ModelView:
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = self._new_model_view(name)
        return view

    def _new_model_view(self, name: str) -> ModelView:
        sim = self.sim
        views = [
            InstanceView(i.instance_id, "loading", stopping=i.stopping)
            if i.status == "loading"
            else InstanceView(
                i.instance_id,
                "ready",
                busy=i.busy,
                idle_since=i.idle_since,
                keep_until=i.keep_until,
                stopping=i.stopping,
            )
            for i in sim.live[name]
        ]
        if name in self.pending and not views:
            # `ScaleLoop._snapshot`: a cold start under way counts as a loading instance.
            views.append(InstanceView("starting:" + name, "loading"))
        requests, queued, since = sim.demand(name)
        return ModelView(name, sim.scaling, requests, queued, since, views)

    def step(self) -> None:
        sim, now = self.sim, self.sim.loop.now
        self._step = None
        sim.result.autoscaler_steps += 1
        if sim.scenario.exact:
            names = sorted(m for m in sim.active if self.classify(m)[0] != "gone")
        else:
            names = self.index.needed(now)
        snap = Snapshot(now, [self._model_view(m) for m in names], sim.free_count)
        decided = plan(snap)
        if decided.starved and not sim.scenario.exact:
            # A model waits for a worker: any idle instance may be preempted for it.
            snap = Snapshot(now, [self._model_view(m) for m in self.index.every()], sim.free_count)
            decided = plan(snap)
        self.starved = decided.starved
        # `ScaleLoop._surplus`; the quiet models left out of the snapshot all have one.
        self._surplus = {m.name for m in snap.models if len(m.live) > decided.desired[m.name]}
        if not sim.scenario.exact:
            self._surplus |= set(self.index.quiet)
        for stop in decided.stops:
            inst = sim.instances.get(stop.instance_id)
            if inst is None or inst.busy or inst.worker.reserved_for:
                continue  # the worker's conditional unload refuses a busy instance
            sim.stop_instance(inst, stop.reason)
        for start in decided.starts:
            model = sim.models[start.model]
            live_n = len(sim.live[start.model])
            if live_n >= start.target:
                continue
            if live_n:
                self.place_new(model, "scale")
            else:
                self.cold_start(model, "cold")
        if decided.wake_at is not None:
            self.wake_at(decided.wake_at)
