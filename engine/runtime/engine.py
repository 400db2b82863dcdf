"""Wharf running one project, as a tree of Twisted services.

::

    Engine (OrderedServices, the root: store, executor, pipeline pool, resources)
     +-- processor                    Processor: stored messages through their channel
     +-- channel:<name>               OrderedServices: one WorkerService per destination, then
     |                                 its SourceService (stops first: no new message, then
     |                                 the workers drain)
     +-- listener:<name>              SourceService of a shared listener (routes.yaml)
     +-- job:sweep, job:leases        JobService: received messages swept, expired leases
     +-- job:optimize                 JobService: the planner's statistics refreshed hourly
     +-- job:<domain job>             JobService per Job a domain contributes
     +-- job:reload                   JobService: changed files linted and applied
     +-- job:heartbeat                JobService: this node's row in the node registry
     +-- job:compact_counters         JobService: PostgreSQL's counter rows folded (one node)
     +-- sftp-server                  Wharf's SFTP server for trading partners

Children stop newest first, one after the other. A hot reload replaces the child services
whose configuration changed (a channel's source, one destination's worker, a listener, the
domains' jobs) and swaps the resources every component reads from.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from engine.channel import Channel
from engine.config.project import Project, fingerprint, load_project
from engine.config.store_path import resolve_store
from engine.config.versions import project_versions
from engine.errors import LintFailed, ListenFailed
from engine.interfaces import Binding, Job
from engine.registry import REGISTRY, Registry
from engine.resources import Resources, snapshot_of
from engine.router import Listener
from engine.runtime.ingest import FrontDoor
from engine.runtime.metrics import Metrics
from engine.runtime.nodes import HEARTBEAT, config_version, node_name
from engine.runtime.outcomes import DeliveryBook
from engine.runtime.pinned import pinned_channel
from engine.runtime.processor import Processor
from engine.runtime.services import (
    JobService,
    OrderedServices,
    SourceService,
    WorkerService,
    domain_job,
    make_source,
    make_worker,
)
from engine.runtime.store import migrate_domains
from engine.sources import IngestOutcome
from engine.store import StoreExecutor, make_store
from engine.store.nodes import Heartbeat

log = Logger(namespace="wharf.engine")


class Engine(OrderedServices):
    """Wharf running one project: ``await start()``, ``await stop()`` (or start and stop it as
    a child of another Twisted service)."""

    def __init__(
        self,
        root: Path | str,
        reactor: Any,
        *,
        project: Project | None = None,
        registry: Registry = REGISTRY,
    ) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.reactor = reactor
        self.registry = registry
        self.project = project or load_project(self.root, registry=registry)
        self.store = make_store(
            resolve_store(self.root, self.project.settings.store), background_checkpoints=True
        )
        # On PostgreSQL other nodes may share the store: recovery and sweeps leave their work.
        self.store.shared = self.store.dialect == "postgresql"  # type: ignore[attr-defined]
        self.executor = StoreExecutor(self.store, reactor, coalesce_wakeups=True)
        self.resources = Resources.of_project(self.project)
        if self.store.shared:  # type: ignore[attr-defined]
            from engine.runtime.coordination import SharedCoordination

            self.resources.coordination = SharedCoordination(
                self.store, self.executor, reactor=reactor
            )
        threads_ = self.project.settings.pipeline_threads
        self.pool = ThreadPool(1, threads_, name="wharf-pipeline")
        self.channels: dict[str, Channel] = {}
        self.listeners: dict[str, Listener] = {}
        self.sources: dict[str, Any] = {}
        self.book = DeliveryBook(self.store, self._bindings)
        self.metrics = Metrics()
        self.processor = Processor(
            reactor=reactor,
            store=self.store,
            executor=self.executor,
            pool=self.pool,
            parallel=threads_ * 2,
            channels=lambda: self.channels,
            delivered=self.wake_destinations,
            workers=self._workers_of,
            pinned=self._pinned,
            metrics=self.metrics,
        )
        self.door = FrontDoor(
            reactor=reactor,
            store=self.store,
            executor=self.executor,
            pool=self.pool,
            processor=self.processor,
            channels=lambda: self.channels,
            listeners=lambda: self.listeners,
            sources=lambda: self.sources,
            metrics=self.metrics,
        )
        self.sftp: Any = None
        self.alerts: Any = None  # engine.runtime.alerts.Alerts when routes.yaml has alerts:
        self.canaries: Any = None  # engine.runtime.canary.Canaries when a channel has one
        self.slos: Any = None  # engine.runtime.slos.Objectives when routes.yaml has slos:
        #: What operators paused: (channel, destination) to who, when, why (``*``: the whole
        #: channel); loaded from the store at start, changed by :meth:`set_paused`.
        self.paused: dict[tuple[str, str], dict[str, Any]] = {}
        self.rejected_fingerprint: dict[str, Any] | None = None
        self._reloading = False
        self._started: defer.Deferred | None = None
        self._closed = False
        self._versions: dict[str, str] = {}
        #: This node among several on one store (engine/runtime/nodes.py).
        self.node = node_name(self.project.settings)
        self.started_at = time.time()
        self.config_version = ""  #: of the whole configuration running (set at start/reload)
        self._pinned_channels: dict[tuple[str, str], Channel | None] = {}

    # -- the front door (what sources and tests call) ----------------------------------------
    async def receive(self, source_key: str, raw: bytes, peer: str, **kw: Any) -> IngestOutcome:
        return await self.door.receive(source_key, raw, peer, **kw)

    async def route(self, listener: str, raw: bytes, peer: str, **kw: Any) -> IngestOutcome:
        return await self.door.route(listener, raw, peer, **kw)

    async def ingest(self, channel: str, raw: bytes, peer: str, **kw: Any) -> IngestOutcome:
        return await self.door.ingest(channel, raw, peer, **kw)

    # -- lifecycle -----------------------------------------------------------------------------
    def startService(self) -> None:
        service.Service.startService(self)
        self._started = defer.ensureDeferred(self._start())

    async def start(self) -> None:
        if not self.running:
            self.startService()
        assert self._started is not None
        await self._started

    async def _start(self) -> None:
        self.store.open()
        self.executor.start()
        self.pool.start()
        if self.store.shared:  # type: ignore[attr-defined]
            self.resources.coordination.start()
        await self.executor.submit(migrate_domains, self.store, self.registry)
        counts = await self.executor.submit(self.store.recover, time.time())
        log.info("recovery: {counts}", counts=counts)
        self.paused = await self.executor.submit(self.store.pauses)
        await self._audit("start", {"channels": sorted(self.project.channels)})
        await self._record_versions(self.project)
        for defn in self.project.channels.values():
            if defn.config.enabled:
                self.channels[defn.name] = self._channel(defn)
        await self._start_domains()
        self.processor.setServiceParent(self)
        for channel in self.channels.values():
            self._add_channel(channel)
        for config in self.project.settings.listeners:
            self._add_listener(config)
        await self._listening(list(self.sources))
        await self.heartbeat()
        clock = self.reactor
        JobService("heartbeat", HEARTBEAT, self.heartbeat, clock).setServiceParent(self)
        JobService("sweep", 2.0, self.processor.sweep, clock).setServiceParent(self)  # replays
        JobService("leases", 30.0, self._release_expired, clock).setServiceParent(self)
        # the planner's statistics kept fresh as tables grow (bench/store_growth.py)
        JobService("optimize", 3600.0, self._optimize, clock).setServiceParent(self)
        for job in self._domain_jobs():
            job.setServiceParent(self)
        compact = getattr(self.store, "compact_counters", None)
        if compact is not None:  # PostgreSQL's append-only counters folded, by one node
            job = Job("compact_counters", self.store.compact_interval, compact)
            domain_job(job, store=self.store, executor=self.executor, clock=clock).setServiceParent(
                self
            )
        interval = self.project.settings.reload_interval
        if interval:
            JobService("reload", interval, self.reload_if_changed, clock).setServiceParent(self)
        if self.project.settings.sftp_server is not None:
            await self._start_sftp()
        await self._watch(None)
        self.processor.sweep()

    def stopService(self) -> defer.Deferred:
        return defer.ensureDeferred(self._stop())

    async def stop(self) -> None:
        await self.stopService()

    async def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started is not None:
            try:
                await self._started
            except Exception:
                pass  # a failed start still leaves what it opened to close
        service.Service.stopService(self)
        await self._stop_children()
        if self.alerts is not None:
            await self.alerts.close()
        await self.executor.stop()
        self.pool.stop()
        if self.store.shared:  # type: ignore[attr-defined]
            self.resources.coordination.stop()
        self.store.close()

    # -- listening -----------------------------------------------------------------------------
    def _places(self, project: Project) -> dict[str, tuple[str, Any]]:
        """Each source of ``project`` by its key: (what names it in an error, its config)."""
        out: dict[str, tuple[str, Any]] = {}
        for name, defn in project.channels.items():
            if defn.config.enabled and defn.config.source is not None:
                out[name] = (f"channel '{name}'", defn.config.source)
        for config in project.settings.listeners:
            out[f"listener:{config.name}"] = (f"listener '{config.name}'", config.source)
        return out

    def _listen_problem(self, label: str, chosen: Any, exc: BaseException) -> str:
        options = chosen.options
        where = getattr(options, "positions", {}).get("listen", chosen.where)
        listen = getattr(options, "listen", "?")
        cause = str(exc).strip() or type(exc).__name__
        return f"{where}: {label} cannot listen on {listen!r}: {cause}"

    async def _listening(self, keys: list[str]) -> None:
        """Wait until the sources of ``keys`` that listen are listening; ListenFailed naming
        each one that cannot (its channel, the file:line of its ``listen``, the cause)."""
        places = self._places(self.project)
        problems = []
        for key in keys:
            ready = getattr(self.sources.get(key), "ready", None)
            if ready is None or key not in places:
                continue
            try:
                await ready()
            except Exception as exc:
                problems.append(self._listen_problem(*places[key], exc))
        if problems:
            raise ListenFailed(problems)

    def _held_ports(self) -> set[int]:
        """TCP ports this engine's sources listen on now."""
        held = set()
        for src in self.sources.values():
            port = getattr(src, "port", None)
            try:
                held.add(int(port.getHost().port))
            except Exception:
                continue
        return held

    async def _can_listen(self, project: Project) -> list[str]:
        """What would not listen if ``project`` were applied: each source whose listen string
        changed (or is new) and names a port this engine does not hold is bound for a moment
        (and let go) to find out."""
        from twisted.internet import protocol

        from engine.net.endpoints import parse_listen, server_endpoint

        running = {
            key: getattr(chosen.options, "listen", None)
            for key, (_, chosen) in self._places(self.project).items()
            if key in self.sources
        }
        held = self._held_ports()
        problems: list[str] = []
        tried: set[str] = set()
        for key, (label, chosen) in self._places(project).items():
            listen = getattr(chosen.options, "listen", None)
            if listen is None or running.get(key) == listen or listen in tried:
                continue
            tried.add(listen)
            try:
                kind, args, kw = parse_listen(listen)
                if kind not in ("tcp", "tcp6", "ssl"):
                    continue
                if int(args[0] if args else kw["port"]) in held:
                    continue  # ours now: let go when the old source stops
                factory = protocol.Factory.forProtocol(protocol.Protocol)
                factory.noisy = False
                endpoint = server_endpoint(
                    self.reactor, listen, getattr(chosen.options, "client_ca", None), self.root
                )
                port = await endpoint.listen(factory)
                await defer.maybeDeferred(port.stopListening)
            except Exception as exc:
                problems.append(self._listen_problem(label, chosen, exc))
        return problems

    # -- children ------------------------------------------------------------------------------
    def _channel(self, defn: Any, project: Project | None = None) -> Channel:
        project = project or self.project
        channel = Channel(defn, project.mappings, self.registry, extras=project.extras)
        channel.version = self._versions.get(defn.name)
        return channel

    async def _record_versions(self, project: Project) -> None:
        """Each channel's configuration version, kept in the store before a message uses it."""
        versions = await threads.deferToThreadPool(
            self.reactor, self.pool, project_versions, project, self.registry
        )
        await self.executor.submit(
            self.store.record_config_versions, list(versions.values()), time.time()
        )
        self._versions = {name: v.version for name, v in versions.items()}
        self.config_version = config_version(self._versions)

    async def heartbeat(self) -> None:
        """This node's row in the store's registry: seen now, its configuration version and
        its listeners (engine/runtime/nodes.py)."""
        beat = Heartbeat(
            node=self.node,
            started_at=self.started_at,
            seen_at=time.time(),
            interval=HEARTBEAT,
            config_version=self.config_version,
            listeners=self.listener_addresses(),
        )
        await self.executor.submit_merged(self.store.node_heartbeat, beat)

    def _pinned(self, name: str, version: str) -> Channel | None:
        """Channel ``name`` as configuration ``version`` had it (a replay "as originally
        processed"), rebuilt from the files the store kept; None when it cannot be."""
        key = (name, version)
        if key not in self._pinned_channels:
            self._pinned_channels[key] = pinned_channel(
                self.store, name, version, self.registry, self.root
            )
        return self._pinned_channels[key]

    def _bindings(self, channel: str) -> list[Binding]:
        running = self.channels.get(channel)
        return running.bindings if running is not None else []

    def _lent(self, key: str) -> dict[str, Callable[[], Any]]:
        """What the runtime lends a component whose factory asks for it."""
        return {
            "services": lambda: self.door.source_services(key),
            "resources": lambda: self.resources,
        }

    def _source(self, key: str, chosen: Any) -> SourceService:
        source = make_source(
            self.registry,
            chosen,
            key=key,
            lend=self._lent(key),
            reactor=self.reactor,
            base_dir=self.root,
            ingest=self.door.ingest_for(key),
        )
        self.sources[key] = source
        return SourceService("source", source, chosen)

    def is_paused(self, channel: str, destination: str) -> bool:
        """Whether an operator holds this destination (or its whole channel)."""
        return (channel, destination) in self.paused or (channel, "*") in self.paused

    async def set_paused(
        self, channel: str, destination: str, paused: bool, *, actor: str, note: str = ""
    ) -> bool:
        """Pause or resume one destination of a channel (``*``: all of them): kept in the store
        (audited; a restart keeps it) and applied to the running workers. The channel still
        accepts and stores what it is sent; nothing leaves a paused destination. False when
        it already was so."""
        now = time.time()
        changed = await self.executor.submit(
            self.store.set_paused, channel, destination, paused, actor=actor, note=note, now=now
        )
        if paused:
            self.paused[(channel, destination)] = {"actor": actor, "note": note, "at": now}
        else:
            self.paused.pop((channel, destination), None)
        for name, worker in self._workers_of(channel).items():
            worker.paused = self.is_paused(channel, name)
        return bool(changed)

    def _worker(self, channel: str, dest: Any) -> WorkerService:
        svc = make_worker(
            self.registry,
            channel,
            dest,
            reactor=self.reactor,
            base_dir=self.root,
            book=self.book,
            executor=self.executor,
            lend={"resources": lambda: self.resources},
        )
        svc.worker.observe = self.metrics.deliver
        svc.worker.paused = self.is_paused(channel, dest.name)
        return svc

    def _add_channel(self, channel: Channel) -> None:
        tree = OrderedServices()
        tree.setName(f"channel:{channel.name}")
        for dest in channel.config.destinations:
            self._worker(channel.name, dest).setServiceParent(tree)
        if channel.config.source is not None:
            self._source(channel.name, channel.config.source).setServiceParent(tree)
        tree.setServiceParent(self)

    def _add_listener(self, config: Any) -> None:
        self.listeners[config.name] = Listener(config, self.registry)
        key = f"listener:{config.name}"
        svc = self._source(key, config.source)
        svc.setName(key)
        svc.setServiceParent(self)

    def _tree(self, channel: str) -> OrderedServices:
        return self.getServiceNamed(f"channel:{channel}")  # type: ignore[return-value]

    @property
    def workers(self) -> dict[tuple[str, str], Any]:
        """The delivery workers by (channel, destination)."""
        out = {}
        for name in self.channels:
            for child in self._tree(name):
                if isinstance(child, WorkerService):
                    out[(name, child.worker.name)] = child.worker
        return out

    def _workers_of(self, channel: str) -> dict[str, Any]:
        try:
            tree = self._tree(channel)
        except KeyError:
            return {}
        return {c.worker.name: c.worker for c in tree if isinstance(c, WorkerService)}

    # -- health (read by engine.web.observability and the alert rules) ------------------------
    def listener_addresses(self) -> dict[str, str | None]:
        """Each source that listens, by key: the address it is bound to (None: not bound)."""
        out: dict[str, str | None] = {}
        for key, src in self.sources.items():
            port = getattr(src, "port", None)
            if port is None and not hasattr(src, "ready"):
                continue
            try:
                host = port.getHost()
                out[key] = f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}"
            except Exception:
                out[key] = None
        return out

    def listener_states(self) -> dict[str, bool]:
        """Each source that listens on a port (a channel's, a shared listener's) and Wharf's
        SFTP server, by key: whether it is bound now."""
        out = {}
        for key, src in self.sources.items():
            if getattr(src, "ready", None) is None:
                continue  # a folder or a poller: nothing to bind
            out[key] = getattr(src, "port", None) is not None and getattr(src, "mounted", True)
        if self.sftp is not None:
            out["sftp-server"] = getattr(self.sftp, "listening", None) is not None
        return out

    def destination_states(self) -> list[dict[str, Any]]:
        """Each running destination: ``failing_for`` (seconds every attempt has failed, 0
        while healthy), ``consecutive_failures``, ``held_until`` (a 429's hold)."""
        now = self.reactor.seconds()
        return [
            {
                "channel": channel,
                "destination": name,
                "failing_for": worker.failing_for(now),
                "consecutive_failures": worker.consecutive_failures,
                "held_until": worker.held_until,
            }
            for (channel, name), worker in sorted(self.workers.items())
        ]

    def store_writable(self) -> defer.Deferred:
        """Fires with whether the store takes a write now (on the store's own thread)."""
        return self.executor.submit(self.store.writable)

    def wake_destinations(self, channel: str) -> None:
        try:
            tree = self._tree(channel)
        except KeyError:
            return
        for child in tree:
            if isinstance(child, WorkerService):
                child.worker.wake()

    async def _start_sftp(self) -> None:
        from engine.sftp.service import SftpServerService

        self.sftp = SftpServerService(
            self.project.settings.sftp_server,
            root=self.root,
            reactor=self.reactor,
            audit=self._audit_for,
            uploads=self.resources.uploads,
            coordination=self.resources.coordination,
        )
        wrapper = _SftpService(self.sftp)
        wrapper.setServiceParent(self)
        try:
            await wrapper.listening
        except Exception as exc:
            config = self.project.settings.sftp_server
            where = config.positions.get("listen", config.where)
            cause = str(exc).strip() or type(exc).__name__
            raise ListenFailed(
                [f"{where}: the SFTP server cannot listen on {config.listen!r}: {cause}"]
            ) from exc

    def _audit_for(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> Any:
        """Audit from a component (the SFTP server): written through the store thread."""
        return self.executor.submit(self.store.audit, actor, action, target, detail, time.time())

    async def _audit(self, action: str, detail: dict[str, Any]) -> None:
        await self._audit_for("wharf", action, str(self.root), detail)

    # -- watching: alerts, SLOs, canaries -------------------------------------------------------
    async def _watch(self, old: Project | None) -> None:
        """Start (or, after a reload that changed them, restart) the alert job, the SLO
        measurement and the canaries."""
        from engine.runtime.alerts import Alerts, StoreAlertState, readings_of

        settings = self.project.settings
        before = old.settings if old is not None else None
        if before is None or _strip(before.alerts) != _strip(settings.alerts):
            await self.replace("job:alerts", None)
            if self.alerts is not None:
                await self.alerts.close()
                self.alerts = None
            if settings.alerts is not None:
                state = StoreAlertState(
                    self.store,
                    self.executor,
                    self.resources.coordination,
                    self.reactor,
                    settings.alerts.interval,
                )
                self.alerts = Alerts(
                    settings.alerts,
                    lambda: defer.ensureDeferred(readings_of(self)),
                    self.reactor,
                    state=state,
                )
                JobService(
                    "alerts", settings.alerts.interval, self.alerts.evaluate, self.reactor
                ).setServiceParent(self)
        if before is None or _strip(before.slos) != _strip(settings.slos):
            from engine.runtime.slos import Objectives

            await self.replace("job:slos", None)
            self.slos = None
            if settings.slos:
                self.slos = Objectives(settings.slos, self.store, self.registry, self.reactor)
                JobService(
                    "slos", self.slos.interval, self.slos.measure, self.reactor
                ).setServiceParent(self)
        from engine.runtime.canary import Canaries

        for child in [c for c in self if (c.name or "").startswith("job:canary-")]:
            await self.replace(child.name, None)
        if self.canaries is None:
            self.canaries = Canaries(self)
        for job in self.canaries.jobs():
            job.setServiceParent(self)

    # -- domains -------------------------------------------------------------------------------
    def _bindings_of(self, domain: Any) -> dict[str, Binding]:
        """The domain's sections on the running channels, by channel."""
        return {
            name: binding
            for name, ch in self.channels.items()
            for binding in ch.bindings
            if binding.domain is domain
        }

    async def _start_domains(self) -> None:
        for domain in self.registry.domains():
            bindings = self._bindings_of(domain)
            if not bindings:
                continue

            def start(domain: Any = domain, bindings: dict[str, Binding] = bindings) -> int:
                with self.store.transaction(f"{domain.name} start") as tx:
                    return domain.start(tx, bindings, time.time())

            n = await self.executor.submit(start)
            if n:
                log.info("{domain}: {n} record(s) set up at start", domain=domain.name, n=n)

    def _domain_jobs(self) -> list[JobService]:
        jobs = []
        for domain in self.registry.domains():
            for job in domain.jobs(self.project.settings, self._bindings_of(domain)):
                svc = domain_job(job, store=self.store, executor=self.executor, clock=self.reactor)
                svc.setName(f"job:{domain.name}:{job.name}")
                jobs.append(svc)
        return jobs

    def _optimize(self) -> defer.Deferred:
        """The store's planner statistics refreshed, on the store thread."""
        return self.executor.submit(self.store.optimize)

    async def _release_expired(self) -> int:
        """Deliveries claimed longer than their lease go back to pending (same key)."""
        n = await self.executor.submit(self.store.release_expired, time.time())
        if n:
            log.warn("{n} delivery lease(s) expired; queued again", n=n)
            for channel in list(self.channels):
                self.wake_destinations(channel)
        return n

    # -- hot reload ----------------------------------------------------------------------------
    async def reload_if_changed(self) -> bool:
        """Lint and swap in changed channels and mappings; a change that fails lint is refused."""
        if self._reloading:
            return False
        self._reloading = True
        try:
            pool = self.reactor.getThreadPool()
            current = await threads.deferToThreadPool(self.reactor, pool, fingerprint, self.root)
            if current == self.project.fingerprint or current == self.rejected_fingerprint:
                return False
            try:
                project = await threads.deferToThreadPool(
                    self.reactor, pool, load_project, self.root, None, self.registry
                )
            except LintFailed as exc:
                self.rejected_fingerprint = current
                log.error(
                    "reload refused; the running configuration stays:\n{errors}", errors=str(exc)
                )
                return False
            except Exception as exc:  # a file we could not read at all: refused, said once
                self.rejected_fingerprint = current
                log.error(
                    "reload refused; the running configuration stays: {error}: {text}",
                    error=type(exc).__name__,
                    text=str(exc)[:300],
                )
                return False
            problems = await self._can_listen(project)
            if problems:
                self.rejected_fingerprint = current
                log.error(
                    "reload refused (a listener cannot listen); the running configuration "
                    "stays:\n{errors}",
                    errors="\n".join(problems),
                )
                await self._audit("reload_refused", {"problems": problems})
                return False
            await self.apply(project)
            return True
        finally:
            self._reloading = False

    async def apply(self, project: Project) -> None:
        """Run ``project`` from now on, replacing the services whose configuration changed."""
        old = self.project
        await self._record_versions(project)
        self.project = project
        self.resources.refresh(snapshot_of(project))
        self.rejected_fingerprint = None
        wanted = {n: d for n, d in project.channels.items() if d.config.enabled}
        new_listeners = {c.name: c for c in project.settings.listeners}
        for name, listener in list(self.listeners.items()):
            if name not in new_listeners or _strip(listener.config) != _strip(new_listeners[name]):
                await self.replace(f"listener:{name}", None)
                self.listeners.pop(name, None)
                self.sources.pop(f"listener:{name}", None)
        for name in list(self.channels):
            if name not in wanted:
                await self.replace(f"channel:{name}", None)
                self.channels.pop(name, None)
                self.sources.pop(name, None)
        for name, defn in wanted.items():
            new = self._channel(defn, project)
            prev = self.channels.get(name)
            self.channels[name] = new  # messages processed from now on use the new version
            if prev is None:
                self._add_channel(new)
                continue
            await self._update_channel(prev, new)
        for lname, lconfig in new_listeners.items():
            if lname not in self.listeners:
                self._add_listener(lconfig)
        for child in [c for c in self if (c.name or "").startswith("job:")]:
            if child.name.count(":") == 2:  # a domain's job: rebuilt with the new settings
                await self.replace(child.name, None)
        for job in self._domain_jobs():
            job.setServiceParent(self)
        await self._watch(old)
        await self._audit(
            "reload",
            {"channels": sorted(wanted), "changed": _changed(old.fingerprint, project.fingerprint)},
        )
        log.info("reloaded: {n} channel(s) running", n=len(self.channels))
        self.processor.wake()
        try:  # the console shows this node's new version now, not at the next beat
            await self.heartbeat()
        except Exception as exc:
            log.warn("heartbeat after the reload failed: {error}", error=str(exc))

    async def _update_channel(self, prev: Channel, new: Channel) -> None:
        tree = self._tree(new.name)
        if _strip(prev.config.source) != _strip(new.config.source):
            self.sources.pop(new.name, None)
            source = self._source(new.name, new.config.source) if new.config.source else None
            await tree.replace("source", source)
        old_dests = {d.name: d for d in prev.config.destinations}
        new_dests = {d.name: d for d in new.config.destinations}
        for dname, dcfg in old_dests.items():
            if dname not in new_dests or _strip(dcfg) != _strip(new_dests[dname]):
                await tree.replace(f"destination:{dname}", None)
        running = {c.name for c in tree}
        for dname, dcfg in new_dests.items():
            if f"destination:{dname}" not in running:
                self._worker(new.name, dcfg).setServiceParent(tree)


class _SftpService(service.Service):
    """Wharf's SFTP server as a child service; ``listening`` fires once it listens."""

    def __init__(self, server: Any) -> None:
        self.setName("sftp-server")
        self.server = server
        self.listening: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.server.start()
        d.chainDeferred(self.listening)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self.server.stop())


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _strip(config: Any) -> Any:
    """A config without its source positions, so moving lines is not a change."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return tuple(
            (f.name, _strip(getattr(config, f.name)))
            for f in dataclasses.fields(config)
            if f.name not in ("where", "positions")
        )
    if isinstance(config, tuple | list):
        return tuple(_strip(c) for c in config)
    if isinstance(config, dict):
        return tuple(sorted((k, _strip(v)) for k, v in config.items()))
    return config
