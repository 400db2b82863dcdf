"""What the runtime lends its components: settings, mapping tables, what domains load (the
trading partners), and the registry of open uploads.

A component keeps the :class:`Resources` object it was handed and reads from it each time it
needs something, never a copy: a hot reload swaps the snapshot behind it
(:meth:`Resources.refresh`), so the next delivery sees the new trading partners without the
component being restarted. No component loads the project itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.coordination import Alone, Coordination
from engine.uploads import OpenUploads


@dataclass(frozen=True)
class Snapshot:
    """One version of the project's configuration, as the runtime runs it."""

    settings: Any = None  # routes.yaml, parsed
    mappings: Any = None  # engine.mappings.Mappings
    extras: Mapping[str, Any] = field(default_factory=dict)  # loaded by domains, by name
    version: str = ""  # content version of the configuration (shown by the console)


class Resources:
    """The live handle components read from; one per runtime."""

    def __init__(
        self,
        root: Path | str,
        snapshot: Snapshot | None = None,
        *,
        uploads: OpenUploads | None = None,
    ) -> None:
        self.root = Path(root)
        self.uploads = uploads if uploads is not None else OpenUploads()
        #: Leases and the upload registry shared with other nodes (the engine sets the
        #: store's on PostgreSQL; alone otherwise).
        self.coordination: Coordination = Alone()
        self._snapshot = snapshot or Snapshot()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def settings(self) -> Any:
        return self._snapshot.settings

    @property
    def mappings(self) -> Any:
        return self._snapshot.mappings

    @property
    def version(self) -> str:
        return self._snapshot.version

    def get(self, name: str, default: Any = None) -> Any:
        """What a domain loaded under ``name`` (``trading_partners``...), now."""
        return self._snapshot.extras.get(name, default)

    def sftp_account(self, path: Path | str) -> str | None:
        """The account of Wharf's own SFTP server (routes.yaml ``sftp_server.partners``) whose
        root holds ``path``, now; None when no account's root does (a local folder). A file
        there can only have come from that account (or from someone with the machine's own
        file system)."""
        server = getattr(self.settings, "sftp_server", None)
        if server is None:
            return None
        target = Path(path)
        target = (target if target.is_absolute() else self.root / target).resolve()
        for account in getattr(server, "partners", ()) or ():
            root = Path(account.root)
            root = (root if root.is_absolute() else self.root / root).resolve()
            if target == root or root in target.parents:
                return str(account.name)
        return None

    def refresh(self, snapshot: Snapshot) -> None:
        """Swap in a reloaded configuration; readers see it from their next read on."""
        self._snapshot = snapshot

    @classmethod
    def of_project(cls, project: Any, *, uploads: OpenUploads | None = None) -> Resources:
        return cls(project.root, snapshot_of(project), uploads=uploads)


def snapshot_of(project: Any) -> Snapshot:
    """The :class:`Snapshot` of a loaded :class:`~engine.config.project.Project`."""
    return Snapshot(
        settings=project.settings,
        mappings=project.mappings,
        extras=dict(getattr(project, "extras", {}) or {}),
        version=getattr(project, "version", ""),
    )
