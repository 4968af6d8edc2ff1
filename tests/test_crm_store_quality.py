"""The call log keeps each call's audio quality and script outcome, in a new database and in one made before."""

from __future__ import annotations

import datetime
import sqlite3

from eko_rtp.crm.records import CallLog
from eko_rtp.crm.store import CrmStore

OLD_CALL_LOG = """
CREATE TABLE call_log (
    id          INTEGER PRIMARY KEY,
    call_id     TEXT NOT NULL,
    phone       TEXT,
    greeting    TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    logged_at   TEXT NOT NULL
);
INSERT INTO call_log (call_id, phone, greeting, duration_ms, outcome, logged_at)
VALUES ('old@x', NULL, 'greet', 10, 'remote_bye', '2026-01-01T00:00:00+00:00');
"""

WHEN = datetime.datetime(2026, 12, 4, 20, 0, tzinfo=datetime.timezone.utc)


def rows(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT call_id, loss_ratio, jitter_ms, rtt_ms FROM call_log ORDER BY id").fetchall()


def test_quality_figures_are_stored_with_the_call(tmp_path):
    path = tmp_path / "crm.sqlite3"
    store = CrmStore(path)
    store.log_calls([(CallLog(call_id="a@x", phone=None, greeting=("greet",), duration_ms=5, outcome="remote_bye",
                              loss_ratio=0.02, jitter_ms=0.5, rtt_ms=1.25), WHEN),
                     (CallLog(call_id="b@x", phone=None, greeting=(), duration_ms=0, outcome="rejected"), WHEN)])
    store.close()
    assert rows(path) == [("a@x", 0.02, 0.5, 1.25), ("b@x", None, None, None)]


def test_a_database_from_before_gets_the_columns_and_keeps_its_calls(tmp_path):
    path = tmp_path / "crm.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_CALL_LOG)
    store = CrmStore(path)
    store.log_calls([(CallLog(call_id="new@x", phone=None, greeting=("greet",), duration_ms=5, outcome="local_bye",
                              loss_ratio=0.0, jitter_ms=0.25, rtt_ms=None), WHEN)])
    store.close()
    assert rows(path) == [("old@x", None, None, None), ("new@x", 0.0, 0.25, None)]


def test_the_script_outcome_is_stored_beside_the_sip_outcome(tmp_path):
    path = tmp_path / "crm.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_CALL_LOG)
    store = CrmStore(path)
    store.log_calls([(CallLog(call_id="new@x", phone=None, greeting=("greet",), duration_ms=5, outcome="remote_bye",
                              script_outcome="callback_offered"), WHEN),
                     (CallLog(call_id="plain@x", phone=None, greeting=(), duration_ms=0, outcome="rejected"), WHEN)])
    store.close()
    CrmStore(path).close()  # opening it again adds nothing twice
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT call_id, outcome, script_outcome FROM call_log ORDER BY id").fetchall() == [
            ("old@x", "remote_bye", None), ("new@x", "remote_bye", "callback_offered"), ("plain@x", "rejected", None)]
        columns = [row[1] for row in db.execute("PRAGMA table_info(call_log)")]
    assert columns[-4:] == ["loss_ratio", "jitter_ms", "rtt_ms", "script_outcome"]
