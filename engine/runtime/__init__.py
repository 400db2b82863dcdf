"""The runtime: Wharf running one project as a tree of Twisted services (:class:`Engine`)."""

from engine.runtime.engine import Engine

__all__ = ["Engine"]
