"""The ``sftp`` destination: upload each delivery to a partner's SFTP server, atomically.

The payload is written under a hidden temporary name (``.<name>.<random>.part``) in
``remote_dir`` and renamed over the final name (``posix-rename@openssh.com`` when the server
offers it, else remove + rename). The default name is the idempotency key, so a redelivery
rewrites the same file with the same bytes. The host key must be known in advance
(``known_hosts`` or ``host_key_fingerprint``); a mismatch fails the delivery (retryable, logged
as an error) and nothing is sent. One connection is kept and reused; it is re-opened when lost.
The upload itself is :class:`engine.net.sftp.SftpUploader`.

==========================================================  =========  =========
outcome                                                     retryable  ambiguous
==========================================================  =========  =========
connect refused / timeout / login refused / host key bad    yes        no
failure while writing the temporary file                    yes        no
failure once the rename was requested                       yes        yes
file name template renders a path                           no         no
==========================================================  =========  =========
"""

from __future__ import annotations

import pathlib
from typing import Any

from engine.net.sftp import SFTP_UPLOAD_SPEC, SftpUploader
from engine.registry import destination

SFTP_DEST_SPEC = SFTP_UPLOAD_SPEC


class SftpDestination(SftpUploader):
    """The ``sftp`` destination of channel ``channel`` named ``name``: one upload target."""

    def __init__(
        self, options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
    ) -> None:
        super().__init__(
            options,
            reactor=reactor,
            base_dir=base_dir,
            label=f"sftp destination {channel}/{name}",
        )
        self.channel = channel
        self.name = name


@destination("sftp", SFTP_DEST_SPEC)
def make_sftp(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> SftpDestination:
    return SftpDestination(options, reactor=reactor, channel=channel, name=name, base_dir=base_dir)
