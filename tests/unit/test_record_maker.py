"""engine.model.record_maker: a record made without the dataclass's __init__ is the same record
(equal, hash, repr, vars, pickle, frozen), and the maker refuses what it cannot make alike."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError, dataclass, field, replace
from decimal import Decimal

import pytest

from engine.domains.procurement.match import LineResult
from engine.model import record_maker
from engine.x12.documents import InvoiceLine


@dataclass(frozen=True)
class Pair:
    name: str
    value: Decimal | None = None
    tags: tuple[str, ...] = ()


def test_a_made_record_is_the_record_init_makes() -> None:
    make = record_maker(Pair)
    made = make(name="a", value=Decimal("1.50"), tags=("x",))
    built = Pair("a", Decimal("1.50"), ("x",))
    assert type(made) is Pair
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert list(vars(made).items()) == list(vars(built).items())
    assert pickle.loads(pickle.dumps(made)) == built
    assert replace(made, name="b") == Pair("b", Decimal("1.50"), ("x",))
    with pytest.raises(FrozenInstanceError):
        made.name = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    "values",
    [
        {"name": "a", "value": None},  # a field left out
        {"value": None, "name": "a", "tags": ()},  # out of order
        {"name": "a", "value": None, "tags": (), "extra": 1},  # not a field
    ],
)
def test_every_field_in_order_or_type_error(values: dict) -> None:
    with pytest.raises(TypeError, match="takes every field in order"):
        record_maker(Pair)(**values)


def test_classes_whose_init_does_more_are_refused() -> None:
    @dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError(self.n)

    @dataclass(frozen=True)
    class Computed:
        n: int
        double: int = field(init=False, default=0)

    @dataclass
    class Mutable:
        n: int

    @dataclass(frozen=True, slots=True)
    class Slotted:
        n: int

    for cls in (Checked, Computed, Slotted):
        with pytest.raises(TypeError, match="does more than set its fields"):
            record_maker(cls)
    with pytest.raises(TypeError, match="not a frozen dataclass"):
        record_maker(Mutable)


@pytest.mark.parametrize("cls", [InvoiceLine, LineResult])
def test_the_records_made_by_the_ten_thousand_can_be_made(cls: type) -> None:
    record_maker(cls)
