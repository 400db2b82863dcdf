"""Trading partners: mappings/trading_partners.yaml is read through a spec, and every mistake is
reported as file:line:column, the dotted field path, what was expected and what came."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from engine.domains.procurement.partners import OurSftpServer, PartnerSftp, load_partners
from engine.errors import LintFailed, UnmappedUnit

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "mappings" / "trading_partners.yaml"
FILE = "mappings/trading_partners.yaml"

GOOD = """\
acme:
  name: ACME MEDICAL SUPPLY INC
  vendors: [VND-ACMEMED]
  version: "005010"
  isa: {qualifier: ZZ, id: ACMEMED}
  our_isa: {qualifier: ZZ, id: GENHOSP}
  gs_id: ACMEMED
  our_gs_id: GENHOSP
  separators: {element: "*", component: ">", segment: "~", repetition: "^"}
  ack: "999"
  uom: {EA: EA, BX: BX, CS: CA}
  ack_within: 4h
  delivery:
    sftp:
      host: edi.acme.example
      user: genhosp
      private_key: keys/acme
      known_hosts: keys/acme_known_hosts
      remote_dir: /in
"""


def write(text: str) -> Path:
    folder = Path(tempfile.mkdtemp()) / "mappings"
    folder.mkdir()
    path = folder / "trading_partners.yaml"
    path.write_text(text)
    return path


def errors_of(text: str, **kw: object) -> list[str]:
    with pytest.raises(LintFailed) as info:
        load_partners(write(text), shown=FILE, env={}, **kw)  # type: ignore[arg-type]
    return [str(e) for e in info.value.errors]


def at(text: str, needle: str, value: str | None = None) -> str:
    """``line:col`` of ``value`` (default: ``needle``) on the first line containing ``needle``."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return f"{i}:{line.index(value if value is not None else needle) + 1}"
    raise AssertionError(needle)


def test_shipped_partners_load() -> None:
    """The shipped file holds a 005010 vendor and a 004010 one with other separators."""
    partners = load_partners(SHIPPED, shown=FILE, env={})
    acme, harbor = partners["acmemed"], partners["harbor"]
    assert (acme.version, acme.isa_version, acme.ack) == ("005010", "00501", "999")
    assert (harbor.version, harbor.isa_version, harbor.ack) == ("004010", "00401", "997")
    assert acme.separators.element == "*" and acme.separators.repetition == "^"
    assert harbor.separators.element == "|" and harbor.separators.repetition is None
    assert harbor.newline == "\r\n"
    assert isinstance(acme.delivery, OurSftpServer) and acme.delivery.account == "acmemed"
    assert isinstance(harbor.delivery, PartnerSftp)
    assert harbor.delivery.options.remote_dir == "/inbound/850"
    assert acme.their_unit("CS") == "CA" and acme.our_unit("CA") == "CA"
    assert harbor.their_unit("CS") == "CA" and harbor.our_unit("CS") == "CA"
    assert harbor.our_unit("CA") == "CA"
    assert acme.asn_is_receipt and not harbor.asn_is_receipt
    assert acme.ack_within == 4 * 3600


def test_lookup_by_isa_sender_and_by_vendor() -> None:
    """Inbound files find their partner by ISA05/ISA06 (padding ignored); POs by vendor id."""
    partners = load_partners(SHIPPED, shown=FILE, env={})
    assert partners.by_isa("ZZ", "ACMEMED        ").id == "acmemed"  # type: ignore[union-attr]
    assert partners.by_isa("12", "5555550123").id == "harbor"  # type: ignore[union-attr]
    assert partners.by_isa("01", "ACMEMED") is None
    assert partners.by_vendor("VND-HARBOR").id == "harbor"  # type: ignore[union-attr]
    assert partners.by_vendor("VND-OTHER") is None


def test_defaults_follow_the_version() -> None:
    """Without `ack`, 005010 expects a 999 and 004010 a 997; tolerances take the defaults."""
    text = GOOD.replace('  ack: "999"\n', "")
    p = load_partners(write(text), shown=FILE, env={})["acme"]
    assert p.ack == "999"
    old = text.replace('"005010"', '"004010"').replace(', repetition: "^"', "")
    q = load_partners(write(old), shown=FILE, env={})["acme"]
    assert q.ack == "997" and q.separators.repetition is None
    from engine.domains.procurement.match import Tolerance

    assert p.tolerance == Tolerance()  # the match's own defaults


def test_unquoted_version_is_read_as_written() -> None:
    """`version: 005010` unquoted is an octal number to YAML; it still means 005010."""
    p = load_partners(write(GOOD.replace('"005010"', "005010")), shown=FILE, env={})["acme"]
    assert p.version == "005010"


def test_bad_version() -> None:
    text = GOOD.replace('"005010"', '"4011"')
    where = at(text, "version", '"4011')
    assert f"{FILE}:{where}: acme.version: expected 004010 or 005010 (got '4011')" in errors_of(
        text
    )


def test_unquoted_tilde_is_null() -> None:
    """`segment: ~` unquoted is YAML null: the error says to quote one character."""
    text = GOOD.replace('segment: "~"', "segment: ~")
    where = at(text, "segment: ~", "~")
    assert (
        f"{FILE}:{where}: acme.separators.segment: expected one character in quotes, "
        "such as '*' (got null)"
    ) in errors_of(text)


def test_repetition_separator_on_004010() -> None:
    text = GOOD.replace('"005010"', '"004010"').replace('  ack: "999"\n', "")
    errors = errors_of(text)
    where = at(text, "repetition", '"^')
    assert (
        f"{FILE}:{where}: acme.separators.repetition: 004010 has no "
        "repetition separator: ISA11 is 'U' (remove it, or use 005010)"
    ) in errors


def test_same_character_twice() -> None:
    text = GOOD.replace('component: ">"', 'component: "*"')
    errors = errors_of(text)
    assert (
        f"{FILE}:{at(text, 'separators:', '{')}: acme.separators: the element and component "
        "separators must differ (both '*')"
    ) in errors


def test_999_needs_005010() -> None:
    text = GOOD.replace('"005010"', '"004010"').replace(', repetition: "^"', "")
    errors = errors_of(text)
    where = at(text, "ack:", '"999')
    assert (
        f"{FILE}:{where}: acme.ack: expected 997 for 004010 (got '999': the 999 exists from 005010)"
    ) in errors


def test_unknown_key_with_suggestion() -> None:
    text = GOOD.replace("ack_within: 4h", "ack_whithin: 4h")
    (error,) = errors_of(text)
    assert error.startswith(
        f"{FILE}:{at(text, 'ack_whithin')}: acme.ack_whithin: field not recognised "
        "(did you mean 'ack_within'?)"
    )


def test_bad_unit_code() -> None:
    text = GOOD.replace("CS: CA}", "CS: case}")
    assert (
        f"{FILE}:{at(text, 'uom:', 'case')}: acme.uom.CS: expected a 2-character X12 unit code "
        "(element 355) such as EA, BX, CA (got 'case')"
    ) in errors_of(text)


def test_ambiguous_inverse_unit_needs_uom_inbound() -> None:
    """CS and CA both become CA: which of ours an inbound CA means must be said."""
    text = GOOD.replace("CS: CA}", "CS: CA, CA: CA}")
    (error,) = errors_of(text)
    assert error == (
        f"{FILE}:{at(text, 'uom:', '{')}: acme.uom: X12 unit 'CA' maps back to several of our "
        "units (CS, CA); say which in uom_inbound, e.g. uom_inbound: {CA: CS}"
    )
    fixed = text.replace("  ack_within", "  uom_inbound: {CA: CA}\n  ack_within")
    assert load_partners(write(fixed), shown=FILE, env={})["acme"].our_unit("CA") == "CA"


def test_separator_inside_an_id() -> None:
    """An ISA id holding the element separator would break every interchange."""
    text = GOOD.replace('element: "*"', 'element: "-"').replace("id: ACMEMED}", "id: ACME-MED}")
    (error,) = errors_of(text)
    assert error.startswith(
        f"{FILE}:{at(text, 'ACME-MED')}: acme.isa.id: expected text without '-'"
    )


def test_isa_id_too_long() -> None:
    text = GOOD.replace("id: ACMEMED}", "id: ACMEMEDICALSUPPLY}")
    assert (
        f"{FILE}:{at(text, 'ACMEMEDICALSUPPLY')}: acme.isa.id: expected an interchange id of "
        "1..15 characters (got 'ACMEMEDICALSUPPLY')"
    ) in errors_of(text)


def test_wrong_types() -> None:
    text = GOOD.replace(
        "ack_within: 4h", "ack_within: 4 hours\n  ta1: maybe\n  tolerance: {price_pct: -1}"
    )
    errors = errors_of(text)
    assert (
        f"{FILE}:{at(text, 'ack_within', '4 hours')}: acme.ack_within: expected a duration such "
        "as 500ms, 30s, 5m, 2h or 7d (got '4 hours')"
    ) in errors
    assert (
        f"{FILE}:{at(text, 'ta1:', 'maybe')}: acme.ta1: expected true or false (got 'maybe')"
        in errors
    )
    assert (
        f"{FILE}:{at(text, 'price_pct', '-1')}: acme.tolerance.price_pct: must be a decimal "
        "number >= 0 (got -1)"
    ) in errors


def test_missing_required_field() -> None:
    text = GOOD.replace("  isa: {qualifier: ZZ, id: ACMEMED}\n", "")
    assert (
        f"{FILE}:2:3: acme.isa: required field is missing (expected a mapping (isa_id))"
        in errors_of(text)
    )


def test_partner_id_must_be_a_name() -> None:
    text = GOOD.replace("acme:", "ACME:", 1)
    assert (
        f"{FILE}:1:1: ACME: expected a partner id of lowercase letters, digits and _ (got 'ACME')"
        in errors_of(text)
    )


def test_delivery_needs_exactly_one_way_and_a_known_host_key() -> None:
    both = GOOD + "    sftp_server: {account: acme}\n"
    assert any(
        e.startswith(f"{FILE}:{at(both, 'sftp:', 'sftp')}: acme.delivery: expected exactly one")
        for e in errors_of(both)
    )
    no_key = GOOD.replace("      known_hosts: keys/acme_known_hosts\n", "")
    assert any(
        "acme.delivery.sftp.known_hosts: set known_hosts or host_key_fingerprint" in e
        for e in errors_of(no_key)
    )


def test_our_sftp_account_must_exist_in_routes() -> None:
    text = GOOD[: GOOD.index("    sftp:")] + "    sftp_server: {account: acmee}\n"
    assert load_partners(write(text), shown=FILE, env={})["acme"].delivery == OurSftpServer("acmee")
    (error,) = errors_of(text, sftp_accounts=["acme", "harbor"])
    assert error == (
        f"{FILE}:{at(text, 'account', 'acmee')}: acme.delivery.sftp_server.account: expected an "
        "account of routes.yaml sftp_server.partners (acme, harbor) (got 'acmee') "
        "(did you mean 'acme'?)"
    )


def test_two_partners_with_one_isa_id() -> None:
    second = GOOD.replace("acme:", "acme2:", 1).replace("VND-ACMEMED", "VND-ACME2")
    errors = errors_of(GOOD + second)
    assert any(
        "acme2.isa: expected a distinct ISA id (got ZZ/ACMEMED, also partner 'acme')" in e
        for e in errors
    ), errors


def test_unset_environment_variable() -> None:
    text = GOOD.replace("edi.acme.example", "${ACME_HOST}")
    assert any(
        "acme.delivery.sftp.host: environment variable 'ACME_HOST' is not set" in e
        for e in errors_of(text)
    )


def test_yaml_syntax_error_has_a_position() -> None:
    (error,) = errors_of(GOOD.replace('element: "*"', "element: *"))
    assert error.startswith(f"{FILE}:9:") and "YAML syntax error" in error


def test_unmapped_unit_names_unit_and_partner() -> None:
    p = load_partners(write(GOOD), shown=FILE, env={})["acme"]
    with pytest.raises(UnmappedUnit) as info:
        p.their_unit("DZ")
    assert "'DZ'" in str(info.value) and "trading partner 'acme'" in str(info.value)
    assert "BX, CS, EA" in str(info.value)


def test_tolerance_profile_feeds_the_match() -> None:
    """The partner's tolerance is the match's Tolerance, read from YAML without floats."""
    from decimal import Decimal

    from engine.domains.procurement.match import SacRule, Tolerance

    text = GOOD.replace(
        "ack_within: 4h",
        "ack_within: 4h\n  tolerance:\n    price_pct: 1.5\n    freight_abs: '12.50'\n"
        "    freight_codes: [D240, G821]\n    sac_rules: {D500: {max_amount: '7.25'}}",
    )
    t = load_partners(write(text), shown=FILE, env={})["acme"].tolerance
    assert isinstance(t, Tolerance)
    assert t.price_pct == Decimal("1.5") and t.freight_abs == Decimal("12.50")
    assert t.freight_codes == frozenset({"D240", "G821"})
    assert t.sac_rules == {"D500": SacRule(Decimal("7.25"), Decimal(0))}
    assert t.price_abs == Tolerance().price_abs  # unset: the match's default
    shipped = load_partners(SHIPPED, shown=FILE, env={})
    assert shipped["acmemed"].tolerance.qty_ordered_pct == Decimal(5)


def test_tolerance_unknown_field() -> None:
    text = GOOD.replace("ack_within: 4h", "ack_within: 4h\n  tolerance: {price_pc: 2}")
    (error,) = errors_of(text)
    assert error.startswith(
        f"{FILE}:{at(text, 'price_pc:')}: acme.tolerance.price_pc: field not recognised "
        "(did you mean 'price_pct'?)"
    )
