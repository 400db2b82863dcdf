"""The lean HL7 v2 tokenizer and the hl7v2 codec: delimiters, escapes, charsets, validation, ACKs.

Section numbers refer to HL7 v2.5.1 chapter 2 (Control): §2.5.4 message delimiters, §2.6 message
construction rules, §2.7 escape sequences in text fields, §2.9 acknowledgment processing,
§2.15.5 ERR, §2.15.8 MSA, §2.15.9 MSH.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from engine.codecs.hl7ack import AckError, make_ack
from engine.codecs.hl7v2 import (
    HL7_SPEC,
    Hl7Codec,
    Separators,
    escape,
    make_hl7,
    tokenize,
    unescape,
)
from engine.errors import CodecError
from engine.spec import Context

STD = Separators()  # | ^ ~ \ &
#: A valid alternative delimiter set: field '#', component '$', repetition '*', escape '!',
#: subcomponent '%' (MSH-1 = '#', MSH-2 = '$*!%').
ALT = Separators("#", "$", "*", "!", "%")


def msh(*fields: str, fs: str = "|", enc: str = "^~\\&") -> str:
    """An MSH segment; ``fields`` are MSH-3, MSH-4, ... in order."""
    return "MSH" + fs + enc + fs + fs.join(fields)


def header(
    control_id: str = "CTRL-1",
    version: str = "2.5.1",
    message_type: str = "DFT^P03",
    charset: str = "",
    processing_id: str = "P",
    sender: tuple[str, str] = ("POU", "GENHOSP"),
    receiver: tuple[str, str] = ("WHARF", "ERPHOSP"),
) -> str:
    """A standard-delimiter MSH with MSH-3..MSH-12 and, when given, MSH-18."""
    fields = [
        sender[0],  # MSH-3
        sender[1],  # MSH-4
        receiver[0],  # MSH-5
        receiver[1],  # MSH-6
        "20260115103000",  # MSH-7
        "",  # MSH-8
        message_type,  # MSH-9
        control_id,  # MSH-10
        processing_id,  # MSH-11
        version,  # MSH-12
    ]
    if charset:
        fields += ["", "", "", "", "", charset]  # MSH-13..MSH-18
    return msh(*fields)


def codec(**options: Any) -> Hl7Codec:
    """An hl7v2 codec with ``options`` parsed through its spec, as a channel file would be."""
    ctx = Context("<test>")
    config = HL7_SPEC.parse(yaml.compose(yaml.safe_dump(options or {})), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return make_hl7(config)


def codec_error(raw: bytes, **options: Any) -> CodecError:
    with pytest.raises(CodecError) as info:
        codec(**options).decode(raw)
    return info.value


# -- fields, components, subcomponents, repetitions ----------------------------------------


def test_field_component_subcomponent_and_repetition_addressing() -> None:
    """SEG-field.component.subcomponent and PID-3[n] address the parts split by |, ^, & and ~
    (HL7 v2.5.1 §2.5.4 message delimiters, §2.6 message construction rules)."""
    raw = (
        header()
        + "\rPID|1||MRN1^^^GENHOSP&1.2.3&ISO^MR~SSN9^^^USSSA^SS||DOE^JANE^Q\r"
        + "FT1|1|U-1\rFT1|2|U-2\r"
    ).encode()
    msg = tokenize(raw)
    assert msg.get("PID-5.1") == "DOE"
    assert msg.get("PID-5.2") == "JANE"
    assert msg.get("PID-5.3") == "Q"
    assert msg.get("PID-5.4") is None
    assert msg.get("PID-3.4") == "GENHOSP"  # first subcomponent of the first repetition
    assert msg.get("PID-3.4.2") == "1.2.3"
    assert msg.get("PID-3.4.3") == "ISO"
    assert msg.get("PID-3[2].1") == "SSN9"
    assert msg.get("PID-3[2].5") == "SS"
    assert msg.get("PID-3[3].1") is None
    assert msg.get("PID-3") == "MRN1^^^GENHOSP&1.2.3&ISO^MR"  # whole first repetition
    assert msg.segment("PID").repetitions(3) == 2
    assert msg.get("FT1-2") == "U-1"
    assert msg.get("FT1[2]-2") == "U-2"
    assert msg.get("FT1[3]-2") is None
    assert msg.get("ZZZ-1") is None
    assert msg.get("PID").startswith("PID|1||MRN1")  # a bare segment name gives its text


def test_msh_1_is_the_field_separator_and_msh_2_the_encoding_characters() -> None:
    """MSH-1 is the field separator itself and MSH-2 the encoding characters, so the field after
    MSH-2 is MSH-3 (HL7 v2.5.1 §2.15.9.1 MSH-1, §2.15.9.2 MSH-2)."""
    msg = tokenize(header(control_id="C-42").encode())
    assert msg.msh.get(1) == "|"
    assert msg.msh.get(2) == "^~\\&"  # not unescaped, not split on ^ or ~
    assert msg.get("MSH-1") == "|"
    assert msg.get("MSH-2") == "^~\\&"
    assert msg.get("MSH-3") == "POU"
    assert msg.get("MSH-4") == "GENHOSP"
    assert msg.get("MSH-9.1") == "DFT"
    assert msg.get("MSH-9.2") == "P03"
    assert msg.get("MSH-10") == "C-42"
    assert msg.get("MSH-12") == "2.5.1"
    assert msg.control_id == "C-42"
    assert msg.message_type == "DFT^P03"
    assert msg.version == "2.5.1"


def test_custom_encoding_characters_come_from_msh_1_and_msh_2() -> None:
    """Delimiters are whatever MSH-1 and MSH-2 declare, here '#' and '$*!%' instead of '|' and
    '^~\\&' (HL7 v2.5.1 §2.5.4 message delimiters: the values in MSH are the ones in force)."""
    raw = (
        msh(
            "POU",
            "GENHOSP",
            "WHARF",
            "GENHOSP",
            "2026",
            "",
            "DFT$P03",
            "ALT-1",
            "P",
            "2.5.1",
            fs="#",
            enc="$*!%",
        )
        + "\rPID#1##A1$$$HOSP%X$MR*B2$$$HOSP$MR##DOE$JANE\r"
        + "NTE#1##pipe | caret ^ tilde ~ amp & backslash \\ stay literal\r"
    ).encode()
    msg = tokenize(raw)
    assert msg.sep == ALT
    assert msg.get("MSH-1") == "#"
    assert msg.get("MSH-2") == "$*!%"
    assert msg.get("MSH-3") == "POU"
    assert msg.message_type == "DFT^P03"  # rendered with ^ whatever the wire separator
    assert msg.control_id == "ALT-1"
    assert msg.get("PID-5.2") == "JANE"
    assert msg.get("PID-3.4.2") == "X"
    assert msg.get("PID-3[2].1") == "B2"
    # the standard delimiters are plain data under another set
    assert msg.get("NTE-3") == "pipe | caret ^ tilde ~ amp & backslash \\ stay literal"


def test_decode_accepts_a_custom_delimiter_set() -> None:
    """The codec validates MSH-9/10/12 through the declared delimiters and builds the dedup key
    from them (HL7 v2.5.1 §2.5.4)."""
    raw = msh(
        "APP",
        "FAC",
        "WHARF",
        "HOSP",
        "2026",
        "",
        "DFT$P03",
        "ALT-2",
        "P",
        "2.5.1",
        fs="#",
        enc="$*!%",
    ).encode()
    parsed = codec().decode(raw)
    assert parsed.message_type == "DFT^P03"
    assert parsed.control_id == "ALT-2"
    assert parsed.dedup_key == "APP|FAC|ALT-2"


# -- escape sequences -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("A\\F\\B", "A|B"),
        ("A\\S\\B", "A^B"),
        ("A\\T\\B", "A&B"),
        ("A\\R\\B", "A~B"),
        ("A\\E\\B", "A\\B"),
        ("\\X41\\", "A"),
        ("\\X4142\\C", "ABC"),
        ("line 1\\.br\\line 2", "line 1\nline 2"),
        ("\\H\\bold\\N\\", "\\H\\bold\\N\\"),  # highlighting is not interpreted: kept as written
        ("dangling \\F", "dangling \\F"),  # no closing escape: kept
    ],
)
def test_unescape_standard_sequences(written: str, value: str) -> None:
    """\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ become the delimiters, \\Xhh\\ the bytes, \\.br\\ a line
    break (HL7 v2.5.1 §2.7 use of escape sequences in text fields; §2.7 formatting and
    hexadecimal data)."""
    assert unescape(written, STD) == value


def test_escaped_delimiters_in_a_message_are_data_not_structure() -> None:
    """An escaped delimiter does not split the field; get() returns the unescaped value
    (HL7 v2.5.1 §2.7: splitting happens before escape sequences are resolved)."""
    raw = (header() + "\rNTE|1||Smith \\T\\ Sons\\S\\Ltd\\F\\x\\R\\y\\E\\z\\X41\\\r").encode()
    msg = tokenize(raw)
    assert msg.get("NTE-3.1") == "Smith & Sons^Ltd|x~y\\zA"
    assert msg.segment("NTE").get(3, 2) == ""  # \S\ did not create a second component


def test_escape_sequences_use_the_declared_escape_character() -> None:
    """With '!' as the escape character, !F! !S! !T! !R! !E! are the escapes, and a backslash
    is ordinary data (HL7 v2.5.1 §2.7: the escape character is the one in MSH-2)."""
    assert unescape("a!F!b!S!c!T!d!R!e!E!f!X41!", ALT) == "a#b$c%d*e!fA"
    assert unescape("C:\\F\\dir", ALT) == "C:\\F\\dir"
    assert escape("a#b$c%d*e!f", ALT) == "a!F!b!S!c!T!d!R!e!E!f"


def test_escape_then_unescape_round_trips() -> None:
    """escape() writes each delimiter as its sequence, the escape character first so nothing is
    escaped twice (HL7 v2.5.1 §2.7)."""
    text = "a|b^c&d~e\\f \\F\\"
    written = escape(text, STD)
    assert written == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f \\E\\F\\E\\"
    assert not any(d in written for d in "|^&~")
    assert unescape(written, STD) == text


# -- segment terminators ---------------------------------------------------------------------


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_segment_ends_cr_lf_and_crlf(end: str) -> None:
    """Segments end with <cr> per the standard; LF and CRLF, common in files, are accepted too
    (HL7 v2.5.1 §2.6 message construction rules: segment terminator is <cr>, hex 0D)."""
    raw = end.join([header(), "PID|1||MRN1", "PV1|1|O", "FT1|1|U-1", ""]).encode()
    msg = tokenize(raw)
    assert [s.name for s in msg.segments] == ["MSH", "PID", "PV1", "FT1"]
    assert msg.get("PV1-2") == "O"
    assert msg.get("FT1-2") == "U-1"  # no stray \r or \n left in the last field
    assert msg.get("MSH-12") == "2.5.1"
    assert msg.encode() == "\r".join([header(), "PID|1||MRN1", "PV1|1|O", "FT1|1|U-1", ""])


# -- character sets (MSH-18) ---------------------------------------------------------------


def test_msh_18_8859_1_decodes_latin_1_bytes() -> None:
    """MSH-18 '8859/1' means ISO 8859-1: byte 0xFC is 'ü', 0xE9 is 'é' (HL7 v2.5.1 §2.15.9.18
    MSH-18 character set, table 0211)."""
    raw = header(charset="8859/1").encode("ascii") + b"\rPID|1||MRN1||M\xfcller^Ren\xe9e\r"
    msg = tokenize(raw)
    assert msg.get("PID-5.1") == "Müller"
    assert msg.get("PID-5.2") == "Renée"
    assert codec().decode(raw).value.get("PID-5.2") == "Renée"


def test_utf8_is_the_default_when_msh_18_is_empty() -> None:
    """Without MSH-18 the bytes are read as UTF-8; Latin-1 bytes then fail with bad_charset
    (HL7 v2.5.1 §2.15.9.18: MSH-18 empty means the default character set, here UTF-8)."""
    ok = header().encode() + "\rPID|1||MRN1||Müller\r".encode()
    assert tokenize(ok).get("PID-5") == "Müller"
    error = codec_error(header().encode() + b"\rPID|1||MRN1||M\xfcller\r")
    assert error.code == "bad_charset"
    assert error.location == "MSH^1^18"


def test_unknown_msh_18_is_a_codec_error() -> None:
    """A character set the codec does not know is refused, not guessed (HL7 v2.5.1 §2.15.9.18)."""
    raw = header(charset="KOI8-R").encode() + b"\rPID|1\r"
    error = codec_error(raw)
    assert error.code == "unsupported_charset"
    assert error.location == "MSH^1^18"
    assert "KOI8-R" in error.message


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [(9, {"message_type": ""}), (10, {"control_id": ""}), (12, {"version": ""})],
    ids=["MSH-9", "MSH-10", "MSH-12"],
)
def test_missing_required_msh_field_is_a_codec_error_with_its_location(
    field: int, kwargs: dict[str, str]
) -> None:
    """MSH-9 message type, MSH-10 control id and MSH-12 version are required; the error names the
    location as SEG^occurrence^field (HL7 v2.5.1 §2.15.9 MSH, §2.15.5 ERR-2 error location)."""
    error = codec_error((header(**kwargs) + "\rPID|1\r").encode())
    assert error.code == "required_field_missing"
    assert error.location == f"MSH^1^{field}"
    assert f"MSH-{field}" in error.message


def test_unsupported_version_is_a_codec_error() -> None:
    """MSH-12 must be one of the channel's versions (HL7 v2.5.1 §2.15.9.12 MSH-12 version id)."""
    error = codec_error(header(version="2.3").encode(), versions=["2.5.1"])
    assert error.code == "unsupported_version"
    assert error.location == "MSH^1^12"
    assert "'2.3'" in error.message
    assert codec(versions=["2.3"]).decode(header(version="2.3").encode()).control_id == "CTRL-1"


def test_processing_id_outside_the_list_is_a_codec_error() -> None:
    """MSH-11 processing id must be one of the accepted ones (HL7 v2.5.1 §2.15.9.11)."""
    error = codec_error(header(processing_id="T").encode(), processing_ids=["P"])
    assert error.code == "unsupported_processing_id"
    assert error.location == "MSH^1^11"


def test_not_hl7_and_bad_msh_2_are_codec_errors() -> None:
    """Bytes not starting with MSH, or an MSH-2 shorter than 4 encoding characters, are refused
    (HL7 v2.5.1 §2.15.9.2 MSH-2 encoding characters)."""
    assert codec_error(b"hello world, not hl7").code == "not_hl7"
    assert codec_error(b"MSH|^~|POU|GENHOSP|||2026||DFT^P03|X|P|2.5.1").code == "bad_msh"


def test_too_large_is_a_codec_error() -> None:
    """A message over max_size is refused before it is parsed."""
    raw = (header() + "\rNTE|1||" + "x" * 2000 + "\r").encode()
    assert codec_error(raw, max_size="1KiB").code == "too_large"
    assert codec(max_size="1MiB").decode(raw).control_id == "CTRL-1"


# -- dedup key --------------------------------------------------------------------------------


def test_dedup_key_is_sending_application_facility_and_control_id() -> None:
    """The dedup key is MSH-3|MSH-4|MSH-10: a resend from the same sender with the same control
    id is a duplicate; the same id from another facility is not (HL7 v2.5.1 §2.15.9.10: MSH-10
    is unique per sending system)."""
    a = codec().decode(header(control_id="42", sender=("POU", "NORTH")).encode())
    b = codec().decode(header(control_id="42", sender=("POU", "SOUTH")).encode())
    assert a.dedup_key == "POU|NORTH|42"
    assert b.dedup_key == "POU|SOUTH|42"
    assert a.control_id == "42"
    assert a.message_type == "DFT^P03"


# -- acknowledgments --------------------------------------------------------------------------


def build_ack(
    msg: Any, code: str, text: str = "", error_code: str = "207", location: str = ""
) -> bytes:
    error = AckError(text, error_code, location) if code not in ("AA", "CA") else None
    return make_ack(msg, code, error)


def _ack(raw: bytes, *args: str) -> Any:
    return tokenize(build_ack(tokenize(raw), *args))


def test_ack_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    """An ACK goes back to the sender: its MSH-3/4 are the original MSH-5/6 and vice versa, and
    MSA-2 echoes the original MSH-10 (HL7 v2.5.1 §2.9.2 original acknowledgment rules,
    §2.15.8.2 MSA-2 message control id)."""
    raw = header(control_id="POU-77", sender=("POU", "GENHOSP"), receiver=("WHARF", "ERP")).encode()
    ack = _ack(raw, "AA")
    assert [ack.get(f"MSH-{n}") for n in (3, 4, 5, 6)] == ["WHARF", "ERP", "POU", "GENHOSP"]
    assert ack.get("MSH-9.1") == "ACK"
    assert ack.get("MSH-9.2") == "P03"
    assert ack.get("MSH-12") == "2.5.1"
    assert ack.get("MSH-10") != "POU-77"  # the ACK has its own control id
    assert ack.get("MSA-1") == "AA"
    assert ack.get("MSA-2") == "POU-77"
    assert ack.segment("ERR") is None


def test_ack_ae_has_an_err_segment_with_location_code_and_escaped_text() -> None:
    """An AE carries ERR with the location (ERR-2), the error code (ERR-3), severity E (ERR-4)
    and the text escaped so its delimiters stay data (HL7 v2.5.1 §2.15.5 ERR, §2.7)."""
    raw = header(control_id="POU-78").encode()
    ack_bytes = build_ack(tokenize(raw), "AE", "bad | value ^ here", "101", "PV1^1^19")
    ack = tokenize(ack_bytes)
    assert ack.get("MSA-1") == "AE"
    assert ack.get("MSA-2") == "POU-78"
    err = ack.segment("ERR")
    assert err is not None
    assert err.raw(2) == "PV1^1^19"
    assert ack.get("ERR-3.1") == "101"
    assert ack.get("ERR-3.2") == "Required field missing"
    assert ack.get("ERR-3.3") == "HL70357"
    assert ack.get("ERR-4") == "E"
    assert b"bad \\F\\ value \\S\\ here" in ack_bytes
    assert ack.get("ERR-8") == "bad | value ^ here"
    assert ack_bytes.endswith(b"\r") and b"\n" not in ack_bytes


def test_ack_keeps_the_message_character_set() -> None:
    """The ACK is encoded in the character set of the message it answers (HL7 v2.5.1
    §2.15.9.18)."""
    raw = header(charset="8859/1").encode() + b"\rPID|1\r"
    ack_bytes = build_ack(tokenize(raw), "AE", "Ungültig")
    assert "Ungültig".encode("latin-1") in ack_bytes
    assert "Ungültig".encode() not in ack_bytes


def test_ack_declares_the_character_set_it_is_encoded_in() -> None:
    """An ACK in Latin-1 carries MSH-18 so that it can be read back (HL7 v2.5.1 §2.15.9.18)."""
    raw = header(charset="8859/1").encode() + b"\rPID|1\r"
    ack_bytes = build_ack(tokenize(raw), "AE", "Müller")
    ack = tokenize(ack_bytes)
    assert ack.get("MSH-18") == "8859/1"
    assert ack.get("ERR-8") == "Müller"


def test_ack_err_location_uses_the_message_delimiters() -> None:
    """ERR-2 components are separated by the inbound component separator (HL7 v2.5.1 §2.5.4)."""
    raw = b"MSH#$*!%#POU#GENHOSP#WHARF#ERP#20260115103000##DFT$P03#C-9#P#2.5.1\rPID#1\r"
    ack = tokenize(build_ack(tokenize(raw), "AE", "bad", "101", "PV1^1^19"))
    assert ack.sep.component == "$"
    assert [ack.get("ERR-2.1"), ack.get("ERR-2.2"), ack.get("ERR-2.3")] == ["PV1", "1", "19"]


def test_repeated_msh18_takes_the_first_repetition() -> None:
    """MSH-18 may repeat; the first repetition is the default character set (§2.15.9.18)."""
    raw = (header(charset="8859/1~UNICODE UTF-8") + "\rPID|1||||Gómez\r").encode("latin-1")
    assert tokenize(raw).get("PID-5") == "Gómez"
