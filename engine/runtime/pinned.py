"""A channel as an earlier configuration version had it: rebuilt from the files the store
kept for that version (engine/store/versions.py), for a replay "as originally processed"."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from engine.channel import Channel
from engine.config.project import load_project
from engine.config.versions import materialize
from engine.registry import REGISTRY, Registry

log = Logger(namespace="wharf.pipeline")


def pinned_channel(
    store: Any, name: str, version: str, registry: Registry = REGISTRY, samples: Path | None = None
) -> Channel | None:
    """Channel ``name`` of configuration ``version``; None (and a warning saying why) when the
    store has no such version or its files no longer load."""
    files = store.config_files(version)
    if not files:
        log.warn("configuration {version} is not in the store", version=version)
        return None
    with tempfile.TemporaryDirectory(prefix="wharf-version-") as tmp:
        try:
            project = load_project(
                materialize(files, Path(tmp)), registry=registry, samples=samples
            )
        except Exception as exc:  # a version that no longer lints with today's code
            log.warn(
                "configuration {version} does not load any more: {error}",
                version=version,
                error=f"{type(exc).__name__}: {str(exc)[:300]}",
            )
            return None
    if name not in project.channels:
        return None
    channel = Channel.of(project, name, registry)
    channel.version = version
    return channel
