"""An operator's pause holds a destination's queue in the worker: nothing is claimed or sent,
no slot is promised to the pipeline's commit, and resuming claims at once."""

from __future__ import annotations

from twisted.trial import unittest

from engine.model import DELIVERED, PENDING
from tests.unit import test_delivery as base


class PauseTests(unittest.SynchronousTestCase):
    make = base.WorkerTests.make  # the worker over test_delivery's in-memory store and a Clock
    setUp = base.WorkerTests.setUp

    def test_a_paused_worker_claims_nothing_and_promises_no_slot(self) -> None:
        self.store.add(1)
        worker = self.make()
        worker.paused = True
        worker.start()
        self.clock.advance(60)
        self.assertEqual(self.store.rows[1].status, PENDING)
        self.assertEqual(self.dest.sent, [])
        self.assertEqual(self.store.claims, 0)
        self.assertEqual(worker.reserve(5), 0)

    def test_resuming_claims_at_once(self) -> None:
        self.store.add(1)
        self.store.add(2)
        worker = self.make()
        worker.paused = True
        worker.start()
        self.assertEqual(self.dest.sent, [])
        worker.paused = False  # no clock advance: the resume itself claims
        self.assertEqual([self.store.rows[i].status for i in (1, 2)], [DELIVERED, DELIVERED])
        self.assertEqual(sorted(i for i, _ in self.dest.sent), [1, 2])

    def test_pausing_a_running_worker_holds_rows_queued_later(self) -> None:
        worker = self.make()
        worker.start()
        worker.paused = True
        self.store.add(3)
        worker.wake()
        self.clock.advance(30)
        self.assertEqual(self.store.rows[3].status, PENDING)
        worker.paused = False
        self.assertEqual(self.store.rows[3].status, DELIVERED)
