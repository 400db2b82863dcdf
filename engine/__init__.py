"""Wharf: an HL7 v2 / FHIR / X12 interface engine on Twisted.

The public API for plugin authors: register components with the decorators of
:mod:`engine.registry`, declare their options with :mod:`engine.spec`, raise the errors of
:mod:`engine.errors`.
"""

from engine._version import __version__
from engine.errors import ConfigError, MappingMiss, MissingField, TransformError, WharfError

__all__ = [
    "ConfigError",
    "MappingMiss",
    "MissingField",
    "TransformError",
    "WharfError",
    "__version__",
]
