"""What validating X12 finds: issues, and the result of each set, group and interchange.

Written by :func:`engine.x12.validate.validate` (pyx12 with the Wharf maps, the ISA checks of
:mod:`engine.x12.ta1`) and read by :mod:`engine.x12.ack`, which writes the 997/999 and TA1 from
them, and by whoever applies the accepted sets. Plain frozen data: no parsing, no rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.x12.ta1 import ta1_ack_code

__all__ = ["GroupResult", "InterchangeResult", "Issue", "SetResult", "Validation"]


@dataclass(frozen=True)
class Issue:
    """One problem found in the data.

    ``level``: ``interchange`` (TA1), ``group`` (AK9), ``set`` (AK5/IK5), ``segment``
    (AK3/IK3) or ``element`` (AK4/IK4). ``code`` is pyx12's code for it: the TA105 note, the
    AK905, AK502, AK304 or AK403 code (pyx12 also has ``HL1``/``HL2`` for a wrong HL01/HL02 and
    ``SEG1`` for trailing separators: acknowledged as AK304 = 8). ``position`` is the segment
    position in its transaction set (ST = 1, as AK302), ``element``/``component`` 1-based,
    ``data_element`` the element reference number (AK402), ``value`` the bad value,
    ``ordinal`` the segment's number in the file (the first ISA is 1).
    """

    level: str
    code: str
    message: str
    segment: str = ""
    position: int | None = None
    element: int | None = None
    component: int | None = None
    data_element: str = ""
    value: str | None = None
    ordinal: int | None = None


@dataclass(frozen=True)
class SetResult:
    id: str  # ST01
    control_number: str  # ST02
    implementation: str  # ST03 ("" when absent)
    ack_code: str  # AK501/IK501: A or R
    codes: tuple[str, ...]  # AK502..AK506 / IK502..IK506
    issues: tuple[Issue, ...]

    @property
    def ok(self) -> bool:
        return self.ack_code == "A"


@dataclass(frozen=True)
class GroupResult:
    functional_id: str  # GS01
    sender: str  # GS02
    receiver: str  # GS03
    control_number: str  # GS06
    version: str  # GS08
    declared_sets: int | None  # GE01 (None when GE is missing or not a number)
    received_sets: int  # sets found (AK903); more than ``len(sets)`` when the group had no map
    ack_code: str  # AK901: A, P (partially accepted) or R
    codes: tuple[str, ...]  # AK905..AK909
    issues: tuple[Issue, ...]  # group level only; set issues are in ``sets``
    sets: tuple[SetResult, ...]

    @property
    def ok(self) -> bool:
        return self.ack_code == "A"

    @property
    def accepted_sets(self) -> int:
        return sum(1 for s in self.sets if s.ok)


@dataclass(frozen=True)
class InterchangeResult:
    control_number: str  # ISA13
    version: str  # ISA12
    sender: tuple[str, str]  # (ISA05, ISA06 stripped)
    receiver: tuple[str, str]  # (ISA07, ISA08 stripped)
    date: str  # ISA09
    time: str  # ISA10
    usage: str  # ISA15
    ack_requested: bool  # ISA14 = 1
    ta1_code: str  # TA105 note code; "000" when the envelope is fine
    ta1_sent: bool  # a TA1 answers this interchange (ISA14 = 1, or ta1_code != "000")
    issues: tuple[Issue, ...]  # interchange level
    groups: tuple[GroupResult, ...]
    separators: tuple[str, str, str, str | None]  # element, component, segment, repetition

    @property
    def ta1_ack(self) -> str:
        """TA104: A, E (processed, trailer wrong) or R (rejected, not processed)."""
        return ta1_ack_code(self.ta1_code)

    @property
    def ok(self) -> bool:
        return self.ta1_code == "000" and all(g.ok for g in self.groups)


@dataclass(frozen=True)
class Validation:
    """What :func:`engine.x12.validate.validate` found in a file: one result per interchange,
    in file order. The acknowledgments are written from it by :func:`engine.x12.ack.acknowledge`
    (or, with a partner's own control numbers, by the procurement book)."""

    interchanges: tuple[InterchangeResult, ...]

    @property
    def ok(self) -> bool:
        return bool(self.interchanges) and all(i.ok for i in self.interchanges)

    @property
    def issues(self) -> tuple[Issue, ...]:
        out: list[Issue] = []
        for ic in self.interchanges:
            out += ic.issues
            for g in ic.groups:
                out += g.issues
                for s in g.sets:
                    out += s.issues
        return tuple(out)
