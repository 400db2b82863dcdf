"""The configuration a preview tries: a project folder, or a git ref of the project's own
repository (its ``routes.yaml``, ``channels/`` and ``mappings/`` at that commit)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from engine.config.project import load_project
from engine.config.versions import CONFIG_PATHS
from engine.errors import ConfigError
from engine.registry import REGISTRY, Registry


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60)


def from_git(root: Path, ref: str, into: Path, what: str = "--config") -> str:
    """Extract the configuration at ``ref`` into ``into``; returns the commit it names.
    ``what``: the argument that named it, for the errors."""
    try:
        found = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"git is needed to read ref {ref!r}: {exc}", file=what) from exc
    if found.returncode != 0:
        raise ConfigError(
            f"expected a project folder or a git ref of {root} (got {ref!r}: neither a folder "
            "nor a commit git knows)",
            file=what,
        )
    commit = found.stdout.decode().strip()
    listed = _git(root, "ls-tree", "--name-only", commit, "--", *CONFIG_PATHS)
    paths = listed.stdout.decode().split()
    if not paths:
        raise ConfigError(
            f"commit {commit[:12]} holds none of {', '.join(CONFIG_PATHS)}", file=what
        )
    archive = _git(root, "archive", "--format=tar", commit, "--", *paths)
    if archive.returncode != 0:
        raise ConfigError(f"git archive of {ref!r} failed: {archive.stderr.decode()}", file=what)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def load_candidate(
    root: Path, spec: str, into: Path, registry: Registry = REGISTRY
) -> tuple[Any, str]:
    """The candidate project and how the report names it. ``spec`` is a folder (absolute, or
    relative to the current folder) or a git ref; the channels' test samples are the live
    project's."""
    folder = Path(spec)
    if folder.is_dir():
        return load_project(folder, registry=registry, samples=root), f"folder {spec}"
    commit = from_git(root, spec, into)
    label = f"git {spec} ({commit[:12]})" if spec != commit else f"git {commit[:12]}"
    return load_project(into, registry=registry, samples=root), label
