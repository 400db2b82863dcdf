"""The one hardened lxml parser every XML reader of Wharf uses (FHIR XML, SOAP answers): no
DTD, no entity, no network, lxml's default size limits."""

from __future__ import annotations

from lxml import etree

__all__ = ["hardened_parser"]


def hardened_parser() -> etree.XMLParser:
    """A parser that loads no DTD, resolves no entity, touches no network and keeps lxml's
    default size limits (one per call: lxml parsers are not shared between threads)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
