"""Secrets a component reads at send time: from an environment variable or a file, never from
YAML. :data:`SECRET_SPEC` is the ``{env: VAR}`` / ``{file: path}`` mapping a channel writes;
:func:`read_secret` reads one, raising a permanent :class:`~engine.errors.DeliveryError` that
names where it looked (the variable or the file), never the value.

A file is read again at every use, so a rotated secret (a Kubernetes or systemd credential
file) takes effect without a restart. Trailing newlines are dropped.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from engine.errors import DeliveryError
from engine.spec import Context, Field, Spec, Str

__all__ = ["ENV_NAME", "SECRET_SPEC", "Secrets", "read_secret", "where"]

ENV_NAME = Str(pattern=r"[A-Za-z_][A-Za-z0-9_]*", hint="an environment variable name")


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if (config.env is None) == (config.file is None):
        ctx.error(
            node,
            path,
            "expected exactly one of env (a variable name) or file (a path) "
            f"(got {'both' if config.env else 'neither'})",
        )


SECRET_SPEC = Spec(
    "secret",
    [
        Field("env", ENV_NAME, None, "Environment variable holding the secret.", "ERP_SECRET"),
        Field(
            "file",
            Str(),
            None,
            "File holding the secret (relative to the project root); read at each use, so a "
            "rotated file takes effect at once.",
            "/run/secrets/erp_secret",
        ),
    ],
    description="Where a secret is read from: an environment variable or a file, never YAML.",
    example="env: ERP_SECRET",
    check=_check,
)


def where(config: Any) -> str:
    """``environment variable 'X'`` or ``file 'p'``: what error text may say of a secret."""
    if config.env is not None:
        return f"environment variable '{config.env}'"
    return f"file '{config.file}'"


def read_secret(
    config: Any,
    *,
    field: str,
    environ: Mapping[str, str],
    base_dir: pathlib.Path | None = None,
) -> str:
    """The secret ``config`` points to; a permanent DeliveryError naming ``field`` and the
    place when it is unset, unreadable or empty."""
    if config.env is not None:
        value = environ.get(config.env)
        if not value:
            raise DeliveryError(
                f"{field}: environment variable '{config.env}' is not set", retryable=False
            )
        return value
    path = pathlib.Path(config.file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DeliveryError(
            f"{field}: cannot read file '{config.file}' ({type(e).__name__})", retryable=False
        ) from None
    if not value:
        raise DeliveryError(f"{field}: file '{config.file}' is empty", retryable=False)
    return value


class Secrets:
    """Reads secrets for one component: its environment and project root bound once."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, base_dir: pathlib.Path | None = None
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.base_dir = base_dir

    def read(self, config: Any, field: str) -> str:
        return read_secret(config, field=field, environ=self.environ, base_dir=self.base_dir)
