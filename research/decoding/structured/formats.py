"""The string formats a schema may name, as the regular languages of their JSON-encoded text.

- date (RFC 3339 full-date, as Python's `date.fromisoformat` accepts it): years 0001..9999,
  months 01..12, the days each month has; 02-29 only in leap years (divisible by 4 and not by
  100, or divisible by 400).
- date-time: date "T" hh:mm:ss with optional fraction and "Z" or ±hh:mm; hours 00..23,
  minutes and seconds 00..59.
- email: local@domain.tld with ASCII letters, digits and ._%+- in the local part.
- uuid: 8-4-4-4-12 hexadecimal digits.
"""

from research.decoding.structured.regex import (DIGIT, HEX_DIGIT, Repeat, alt, byte_range, byte_set, literal, optional,
                                                plus, seq, star)


def _between(first: str, last: str):
    """One digit in [first, last]."""
    return byte_range(ord(first), ord(last))


YEAR = alt(seq(literal("000"), _between("1", "9")), seq(literal("00"), _between("1", "9"), DIGIT),
           seq(literal("0"), _between("1", "9"), DIGIT, DIGIT), seq(_between("1", "9"), DIGIT, DIGIT, DIGIT))
LEAP_YEAR = alt(
    seq(DIGIT, DIGIT, alt(seq(literal("0"), byte_set("48")), seq(byte_set("2468"), byte_set("048")),
                          seq(byte_set("13579"), byte_set("26")))),
    seq(alt(seq(literal("0"), byte_set("48")), seq(byte_set("2468"), byte_set("048")),
            seq(byte_set("13579"), byte_set("26"))), literal("00")),
)
DAY_28 = alt(seq(literal("0"), _between("1", "9")), seq(literal("1"), DIGIT), seq(literal("2"), _between("0", "8")))
DAY_30 = alt(DAY_28, literal("29"), literal("30"))
DAY_31 = alt(DAY_30, literal("31"))
MONTH_DAY = alt(
    seq(alt(*(literal(m) for m in ("01", "03", "05", "07", "08", "10", "12"))), literal("-"), DAY_31),
    seq(alt(*(literal(m) for m in ("04", "06", "09", "11"))), literal("-"), DAY_30),
    seq(literal("02-"), DAY_28),
)
DATE = alt(seq(YEAR, literal("-"), MONTH_DAY), seq(LEAP_YEAR, literal("-02-29")))
HOUR = alt(seq(byte_set("01"), DIGIT), seq(literal("2"), _between("0", "3")))
SIXTY = seq(_between("0", "5"), DIGIT)
TIME = seq(HOUR, literal(":"), SIXTY, literal(":"), SIXTY, optional(seq(literal("."), plus(DIGIT))),
           alt(literal("Z"), seq(byte_set("+-"), HOUR, literal(":"), SIXTY)))
DATE_TIME = seq(DATE, literal("T"), TIME)
_LOCAL = byte_set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_LABEL = plus(byte_set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"))
_LETTER = byte_set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
EMAIL = seq(plus(_LOCAL), literal("@"), _LABEL, star(seq(literal("."), _LABEL)), literal("."),
            Repeat(_LETTER, 2, None))
UUID = seq(*(Repeat(HEX_DIGIT, 8, 8), *(seq(literal("-"), Repeat(HEX_DIGIT, n, n)) for n in (4, 4, 4, 12))))

FORMATS = {"date": DATE, "date-time": DATE_TIME, "email": EMAIL, "uuid": UUID}
