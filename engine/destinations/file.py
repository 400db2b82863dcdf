"""The ``file`` destination: write each delivery's payload to a file in a directory, atomically.

The payload goes to a temporary file (name starting with ``.``) in the target directory, is
fsynced, renamed over the final name with :func:`os.replace` and the directory is fsynced
(:func:`engine.net.files.write_atomically`). The default file name is the delivery's
idempotency key, so a redelivery rewrites the same file with the same bytes: delivering twice is
harmless. Blocking I/O runs in a thread pool, never on the reactor thread.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.files import extension_for, write_atomically
from engine.registry import destination
from engine.spec import Bool, Context, Field, Spec, Str, join
from engine.templating import check_template, render_template, template_values

log = Logger(namespace="wharf.destination.file")


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    problem = check_template(config.filename)
    if problem:
        ctx.error(node, join(path, "filename"), problem)
    elif "/" in config.filename or "\\" in config.filename:
        ctx.error(
            node,
            join(path, "filename"),
            f"must be a plain file name without a directory (got {config.filename!r}); "
            "put the directory in 'dir'",
        )


FILE_SPEC = Spec(
    "file",
    [
        Field(
            "dir",
            Str(),
            description="Directory to write to (created if missing); relative paths are "
            "relative to the project root.",
            example="/var/spool/wharf/outbound/erp",
        ),
        Field(
            "filename",
            Str(),
            "{idempotency_key}{ext}",
            "File name template: the http placeholders plus {ext} (.json, .hl7, .x12, .xml or "
            ".bin from the content type). Must not contain a directory or '..'.",
            "{channel}-{message_id}{ext}",
        ),
        Field(
            "fsync",
            Bool(),
            True,
            "fsync the file and the directory before reporting success.",
            True,
        ),
    ],
    description=(
        "Write each delivery's payload to a file, atomically (temporary file, fsync, rename). "
        "The default name is the idempotency key, so a redelivery overwrites the same file "
        "with the same bytes."
    ),
    example="""
file:
  dir: outbound/erp
  filename: "{idempotency_key}{ext}"
  fsync: true
""",
    check=_check,
)


class FileDestination:
    """Writes each delivery to ``dir/filename``; returns no response."""

    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        name: str,
        base_dir: pathlib.Path,
        threadpool: ThreadPool | None = None,
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.name = name
        directory = pathlib.Path(options.dir)
        if not directory.is_absolute():
            directory = pathlib.Path(base_dir) / directory
        self.directory = directory
        self.threadpool = threadpool

    def filename_for(self, delivery: Delivery) -> str:
        """The rendered file name; a permanent DeliveryError if it would leave ``dir``."""
        values = template_values(delivery, ext=extension_for(delivery.content_type))
        name = render_template(self.options.filename, values, what="filename")
        if (
            not name
            or "/" in name
            or "\\" in name
            or os.sep in name
            or (os.altsep and os.altsep in name)
            or ".." in name
            or "\0" in name
        ):
            raise DeliveryError(
                f"filename must be a plain name inside 'dir', without a path separator or '..' "
                f"(got {name!r})",
                retryable=False,
            )
        return name

    async def send(self, delivery: Delivery) -> bytes | None:
        """Write the payload atomically; None (no response to store)."""
        name = self.filename_for(delivery)
        pool = self.threadpool if self.threadpool is not None else self.reactor.getThreadPool()
        try:
            await deferToThreadPool(
                self.reactor,
                pool,
                write_atomically,
                self.directory,
                name,
                delivery.payload,
                self.options.fsync,
            )
        except OSError as e:
            raise DeliveryError(
                f"could not write {name!r} in {str(self.directory)!r}: "
                f"{e.strerror or type(e).__name__}",
                retryable=True,
            ) from e
        log.debug(
            "destination {channel}/{destination}: delivery {delivery_id} written",
            channel=self.channel,
            destination=self.name,
            delivery_id=delivery.id,
        )
        return None

    def close(self) -> None:
        """Nothing to release."""
        return None


@destination("file", FILE_SPEC)
def make_file(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> FileDestination:
    """Build the ``file`` destination of channel ``channel`` named ``name``."""
    return FileDestination(options, reactor=reactor, channel=channel, name=name, base_dir=base_dir)
