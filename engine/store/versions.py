"""The store's side of configuration versions (store migration ``CONFIG_VERSIONS_MIGRATION``):
each version's files kept once by their SHA-256, the version each message was produced by, and
the version a replay asks for. The store does not compute versions (engine/config/versions.py
does); it keeps what it is handed."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Version(Protocol):
    version: str
    channel: str
    git_commit: str | None
    files: Mapping[str, bytes]


def record_versions(conn: sqlite3.Connection, versions: Sequence[Version], now: float) -> int:
    """Keep each version and its files (once each); returns how many versions were new."""
    new = 0
    for v in versions:
        if conn.execute("SELECT 1 FROM config_versions WHERE version = ?", (v.version,)).fetchone():
            continue
        shas = {}
        for rel, data in v.files.items():
            sha = hashlib.sha256(data).hexdigest()
            shas[rel] = sha
            conn.execute(
                "INSERT OR IGNORE INTO config_files (sha256, data) VALUES (?, ?)", (sha, data)
            )
        conn.execute(
            "INSERT INTO config_versions (version, channel, git_commit, files, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (v.version, v.channel, v.git_commit, json.dumps(shas, sort_keys=True), now),
        )
        new += 1
    return new


def set_message_versions(conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]]) -> None:
    """Record ``(message_id, version)``: the version that produced the message's outputs; a
    replay's request for a configuration is spent by it."""
    conn.executemany(
        "UPDATE messages SET config_version = ?, replay_config = NULL WHERE id = ?",
        [(version, message_id) for message_id, version in pairs],
    )


def message_version(conn: sqlite3.Connection, message_id: str) -> dict[str, Any] | None:
    """The version a message was produced by, with its channel, commit and files' hashes;
    None when the message predates versions or was never processed."""
    row = conn.execute(
        "SELECT m.config_version, v.channel, v.git_commit, v.files, v.created_at, "
        "m.replay_config FROM messages m LEFT JOIN config_versions v "
        "ON v.version = m.config_version WHERE m.id = ?",
        (message_id,),
    ).fetchone()
    if row is None or (row[0] is None and row[5] is None):
        return None
    return {
        "version": row[0],
        "channel": row[1],
        "git_commit": row[2],
        "files": {k: v[:12] for k, v in json.loads(row[3] or "{}").items()},
        "first_used_at": row[4],
        "replay_with": row[5],
    }


def version_files(conn: sqlite3.Connection, version: str) -> dict[str, bytes] | None:
    """The files of a version (relative path -> bytes), or None for an unknown version."""
    row = conn.execute("SELECT files FROM config_versions WHERE version = ?", (version,)).fetchone()
    if row is None:
        return None
    out = {}
    for rel, sha in json.loads(row[0]).items():
        data = conn.execute("SELECT data FROM config_files WHERE sha256 = ?", (sha,)).fetchone()
        if data is not None:
            out[rel] = bytes(data[0])
    return out


def pin_replay(conn: sqlite3.Connection, message_id: str) -> str | None:
    """Ask that the message's next run use the version it was produced by; returns it (None
    when it has none: it is then processed with the current configuration)."""
    row = conn.execute("SELECT config_version FROM messages WHERE id = ?", (message_id,)).fetchone()
    version = row[0] if row else None
    if version is not None:
        conn.execute("UPDATE messages SET replay_config = ? WHERE id = ?", (version, message_id))
    return version


def replay_pins(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    """The versions replays asked for, by message id (only the pinned ones)."""
    out: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        for mid, version in conn.execute(
            f"SELECT id, replay_config FROM messages WHERE id IN ({marks}) "
            "AND replay_config IS NOT NULL",
            chunk,
        ):
            out[mid] = version
    return out
