"""Configuration versions: which configuration produced a message's outputs.

A channel's version is a content hash of what decides its outputs: ``routes.yaml``, the
channel's file and the mapping tables it reads (named in its transform options and domain
sections, plus the tables its domains read: ``Domain.reads``). A change to another channel or
to a table this channel never reads leaves its version as it was. The version also records the
git commit of the project folder when it is a git checkout (and whether the files differ from
it), and the bytes of every file it hashes, so that a message can be processed again "as
originally processed" (``engine.preview``) long after the files changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.registry import REGISTRY, Registry

#: what a project's configuration is, for git
CONFIG_PATHS = ("routes.yaml", "channels", "mappings")


@dataclass(frozen=True)
class ConfigVersion:
    """One channel's configuration version: ``version`` is the hash messages record."""

    version: str
    channel: str
    git_commit: str | None
    files: Mapping[str, bytes]  # relative path -> bytes, everything the hash covers

    @property
    def tables(self) -> list[str]:
        return sorted(Path(p).stem for p in self.files if p.startswith("mappings/"))

    def summary(self) -> dict[str, Any]:
        """What ``wharf messages --show`` prints: version, commit, files with their hashes."""
        return {
            "version": self.version,
            "channel": self.channel,
            "git_commit": self.git_commit,
            "files": {p: _sha(data)[:12] for p, data in sorted(self.files.items())},
        }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _strings(value: Any, seen: set[int] | None = None) -> Iterable[str]:
    """Every string inside a parsed configuration value (dataclasses, dicts, lists)."""
    seen = seen if seen is not None else set()
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if f.name not in ("where", "positions"):
                yield from _strings(getattr(value, f.name), seen)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v, seen)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v, seen)


def tables_read(project: Any, name: str, registry: Registry = REGISTRY) -> list[str]:
    """The mapping tables channel ``name`` reads: named in its configuration, or read by a
    domain it has a section for."""
    config = project.channels[name].config
    have = set(project.mappings.tables)
    named = {s for s in _strings(config) if s in have}
    for domain in registry.domains():
        if getattr(config, domain.name, None) is not None:
            named |= set(getattr(domain, "reads", ())) & have
    return sorted(named)


def git_commit(root: Path) -> str | None:
    """``HEAD`` of the git checkout holding ``root`` (``+dirty`` when the configuration files
    differ from it), or None when it is no checkout or git is not installed."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            [*("git", "-C", str(root), "status", "--porcelain", "--"), *CONFIG_PATHS],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}+dirty" if dirty.stdout.strip() else commit


def channel_version(
    project: Any, name: str, commit: str | None = None, registry: Registry = REGISTRY
) -> ConfigVersion:
    """The version of channel ``name`` of a loaded project (see the module docstring)."""
    root = Path(project.root)
    files: dict[str, bytes] = {}
    routes = root / "routes.yaml"
    if routes.exists():
        files["routes.yaml"] = routes.read_bytes()
    defn = project.channels[name]
    files[defn.file] = (root / defn.file).read_bytes()
    for table in tables_read(project, name, registry):
        rel = project.mappings.tables[table].file
        files[rel] = (root / rel).read_bytes()
    digest = hashlib.sha256(name.encode() + b"\0")
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + _sha(files[rel]).encode() + b"\0")
    return ConfigVersion(digest.hexdigest()[:16], name, commit, files)


def project_versions(project: Any, registry: Registry = REGISTRY) -> dict[str, ConfigVersion]:
    """Every channel's version (one git call for them all)."""
    commit = git_commit(Path(project.root))
    return {n: channel_version(project, n, commit, registry) for n in project.channels}


def materialize(files: Mapping[str, bytes], folder: Path) -> Path:
    """Write a version's files under ``folder`` (a project folder to load); returns it."""
    for rel, data in files.items():
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ValueError(f"a version's file must stay inside the project (got {rel!r})")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder
