"""The runtime's child services: a channel (its source and one worker per destination), a
shared listener, a periodic job, and an ordered service tree that stops its children one by
one, newest first (a source stops taking messages before the workers drain)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import Logger

from engine.delivery import DeliveryPolicy, DeliveryWorker, rate_of
from engine.interfaces import Destination, Job, Source
from engine.registry import Registry

log = Logger(namespace="wharf.runtime")


class OrderedServices(service.MultiService):
    """A MultiService that stops its children in reverse order, each after the one before."""

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            await defer.maybeDeferred(child.stopService)

    async def replace(self, name: str, new: service.IService | None) -> None:
        """Stop and remove the child called ``name`` (if any), then add ``new`` (if any)."""
        try:
            old = self.getServiceNamed(name)
        except KeyError:
            old = None
        if old is not None:
            await defer.maybeDeferred(old.stopService)
            # removeService would stop it again; detach without a second stop
            self.namedServices.pop(name, None)
            self.services.remove(old)
            old.parent = None
        if new is not None:
            new.setServiceParent(self)


class SourceService(service.Service):
    """One source component, started and stopped with its channel (or listener)."""

    def __init__(self, name: str, source: Source, config: Any) -> None:
        if not isinstance(source, Source):
            raise TypeError(f"source {name}: expected an engine.interfaces.Source (got {source!r})")
        self.setName(name)
        self.source = source
        self.config = config

    def startService(self) -> None:
        super().startService()
        self.source.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self.source.stop())


class WorkerService(service.Service):
    """The delivery worker of one destination of one channel."""

    def __init__(self, worker: DeliveryWorker, config: Any) -> None:
        self.setName(f"destination:{worker.name}")
        self.worker = worker
        self.config = config

    def startService(self) -> None:
        super().startService()
        self.worker.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.worker.stop()
        closing = self.worker.destination.close()
        if closing is not None:
            await closing


def make_source(
    registry: Registry, chosen: Any, *, key: str, lend: dict[str, Any], **keywords: Any
) -> Source:
    """Build a source from its chosen config. ``lend`` holds what the runtime lends, as
    makers (``services``, ``resources``): each is made and passed only to a factory that takes
    that keyword."""
    factory = registry.get("source", chosen.name).factory
    params = inspect.signature(factory).parameters
    extra = {k: make() for k, make in lend.items() if k in params}
    return factory(chosen.options, channel=key, **keywords, **extra)


def make_worker(
    registry: Registry,
    channel: str,
    dest: Any,
    *,
    reactor: Any,
    base_dir: Any,
    book: Any,
    executor: Any,
    lend: dict[str, Any],
) -> WorkerService:
    comp = dest.component
    factory = registry.get("destination", comp.name).factory
    params = inspect.signature(factory).parameters
    extra = {k: make() for k, make in lend.items() if k in params}
    destination = factory(
        comp.options, reactor=reactor, channel=channel, name=dest.name, base_dir=base_dir, **extra
    )
    if not isinstance(destination, Destination):
        raise TypeError(
            f"destination {channel}/{dest.name}: expected an engine.interfaces.Destination "
            f"(got {destination!r})"
        )
    rate, burst = rate_of(dest.rate_limit)
    policy = DeliveryPolicy.from_retry(
        dest.retry,
        rate_per_second=rate,
        rate_burst=burst,
        concurrency=dest.concurrency,
        idempotent=dest.idempotent,
        ordered=dest.ordered,
        on_poison=dest.on_poison,
        lease=dest.lease,
    )
    worker = DeliveryWorker(
        channel=channel,
        name=dest.name,
        destination=destination,
        policy=policy,
        store=book,
        executor=executor,
        clock=reactor,
    )
    return WorkerService(worker, dest)


class JobService(internet.TimerService):
    """A periodic job: ``run()`` returns a Deferred (or a value); a failure is logged and the
    job goes on at its next turn (a plain TimerService would stop for good)."""

    def __init__(self, name: str, step: float, run: Callable[[], Any], clock: Any) -> None:
        super().__init__(step, self._turn)
        self.setName(f"job:{name}")
        self.run = run
        self.clock = clock
        self._first = True

    def _turn(self) -> Any:
        if self._first:  # TimerService calls at once; the first turn is one step after start
            self._first = False
            return None
        try:
            result = self.run()
        except Exception:
            log.failure("job {name} failed", name=self.name)
            return None
        if inspect.iscoroutine(result):
            result = defer.ensureDeferred(result)
        if isinstance(result, defer.Deferred):
            # the next turn waits for this one; a failure is logged, never the end of the job
            return result.addErrback(lambda f: log.failure("job {name} failed", f, name=self.name))
        return None

    def startService(self) -> None:
        self._first = True
        super().startService()


def domain_job(job: Job, *, store: Any, executor: Any, clock: Any) -> JobService:
    """A domain's job, run in one store transaction on the store thread; by one node at a time
    when several share the database (an advisory lock held until that transaction ends)."""
    import time

    def in_transaction() -> int:
        with store.transaction(job.name, durable=job.durable) as tx:
            if not tx.try_lock(f"job:{job.name}"):
                return 0  # another node sharing the database is running it right now
            return job.run(tx, time.time())

    def run() -> Any:
        d = executor.submit(in_transaction)

        def done(n: int) -> int:
            if n and job.alert:
                getattr(log, job.alert_level)(job.alert, n=n)
            return n

        return d.addCallback(done)

    return JobService(job.name, job.interval, run, clock)
