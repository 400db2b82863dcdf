"""PostgreSQL stopped with ``pg_ctl stop -m immediate`` under load and started again (issue 15).

Real processes: a throw-away PostgreSQL cluster of its own (it is stopped mid-test), the sample
ERP (``wharf demo-erp``) and ``wharf run`` with ``WHARF_DB`` naming the database. Senders are
threads with raw MLLP sockets that resend whatever got no AA.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.helpers import (
    Processes,
    make_messages,
    wait_until,
)
from tests.integration.pg_helpers import (
    Resenders,
    all_sent,
    assert_delivered_once,
    node_with_erp,
)
from tests.integration.test_mllp_peers import STENT
from tests.integration.test_postgres_nodes import sql, with_lease


def _diagnose(url: str) -> str:
    """What the database holds while deliveries wait: open transactions and their locks."""
    try:
        activity = sql(
            url,
            "SELECT pid, state, xact_start, left(query, 120) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid != pg_backend_pid()",
        )
        locks = sql(
            url,
            "SELECT l.pid, l.locktype, l.mode, l.granted, c.relname FROM pg_locks l "
            "LEFT JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid != pg_backend_pid() AND l.locktype IN ('relation', 'tuple', "
            "'transactionid', 'advisory') ORDER BY l.pid",
        )
        waiting = sql(
            url,
            "SELECT destination, status, count(*), min(next_attempt_at), max(lease_until) "
            "FROM outbox WHERE status != 'sent' GROUP BY destination, status",
        )
    except Exception as exc:  # the diagnosis must not hide the failure
        return f"(no diagnosis: {exc})"
    return f"now {time.time():.1f}\nactivity: {activity}\nlocks: {locks}\nnot sent: {waiting}"


@pytest.mark.integration
@pytest.mark.slow
def test_after_an_immediate_stop_and_restart_under_load_every_message_is_delivered_once(
    project_dir: Path, tmp_path: Path
) -> None:
    """Four senders keep one node busy; PostgreSQL is stopped with ``-m immediate`` and
    started again 3 s later. Afterwards EVERY acknowledged message reaches the ERP, within a
    bounded wait, under exactly one Idempotency-Key (the stored one), and nothing stays
    pending or in flight: the node's delivery workers came back by themselves."""
    from engine.testing.postgres import Cluster

    with_lease(project_dir)  # a send whose outcome could not be recorded goes again soon
    batches = [make_messages(120, f"RS{n}-", sample=STENT) for n in range(4)]
    sent = {cid for batch in batches for cid, _ in batch}
    with Cluster(fsync=True) as cluster, Processes(tmp_path) as procs:
        url = cluster.create_database("restart")
        env, record, node = node_with_erp(procs, project_dir, tmp_path, url)

        senders = Resenders(int(env["MLLP_PORT"]), batches).start()
        wait_until(lambda: senders.acked() >= 150, 60, "150 AAs", procs=[node])
        cluster.stop("immediate")
        time.sleep(3)  # (the outage lasts a while: senders get AR meanwhile)
        cluster.start()
        assert senders.join(180), "a sender hung"
        assert senders.outcome == dict.fromkeys(sent, "AA")

        try:
            wait_until(lambda: all_sent(url, sent), 60, "every message delivered", procs=[node])
        except AssertionError:
            print(_diagnose(url))
            raise
        assert_delivered_once(url, sent, record)
        assert node.alive()
        print(f"\nanswers while PostgreSQL went down and came back: {dict(senders.codes)}")
