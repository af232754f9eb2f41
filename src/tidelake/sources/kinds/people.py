"""``user_profiles``: randomuser.me-shaped people, with nested structs as the API returns them."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from tidelake.sources.kinds.events import Columns, faker
from tidelake.sources.kinds.rand import Block, ids

_LOCALES = [  # Faker locale, country, nationality code, UTC offset, time zone description
    ("en_US", "United States", "US", "-5:00", "Eastern Time (US & Canada)"),
    ("en_GB", "United Kingdom", "GB", "0:00", "Western Europe Time, London"),
    ("fr_FR", "France", "FR", "+1:00", "Brussels, Copenhagen, Madrid, Paris"),
    ("de_DE", "Germany", "DE", "+1:00", "Brussels, Copenhagen, Madrid, Paris"),
    ("es_ES", "Spain", "ES", "+1:00", "Brussels, Copenhagen, Madrid, Paris"),
    ("nl_NL", "Netherlands", "NL", "+1:00", "Brussels, Copenhagen, Madrid, Paris"),
    ("no_NO", "Norway", "NO", "+1:00", "Brussels, Copenhagen, Madrid, Paris"),
    ("en_AU", "Australia", "AU", "+10:00", "Eastern Australia, Guam, Vladivostok"),
]
_POOL = 200  # entries per locale and pool
_YEAR_US = 31_556_952_000_000  # mean Gregorian year in µs


class _Pools(NamedTuple):
    male: pa.Array
    female: pa.Array
    last: pa.Array
    male_slug: pa.Array
    female_slug: pa.Array
    last_slug: pa.Array
    city: pa.Array
    state: pa.Array
    street: pa.Array
    postcode: pa.Array
    words: pa.Array


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", ascii_text.lower()) or "user"


@lru_cache(maxsize=16)
def _pools(seed: int) -> _Pools:
    cols: dict[str, list[str]] = {k: [] for k in _Pools._fields}
    for locale, *_ in _LOCALES:
        fake = faker(seed, "user_profiles", locale)
        male = [fake.first_name_male() for _ in range(_POOL)]
        female = [fake.first_name_female() for _ in range(_POOL)]
        last = [fake.last_name() for _ in range(_POOL)]
        state = getattr(fake, "administrative_unit", fake.city)
        cols["male"] += male
        cols["female"] += female
        cols["last"] += last
        cols["male_slug"] += [_slug(n) for n in male]
        cols["female_slug"] += [_slug(n) for n in female]
        cols["last_slug"] += [_slug(n) for n in last]
        cols["city"] += [fake.city() for _ in range(_POOL)]
        cols["state"] += [state() for _ in range(_POOL)]
        cols["street"] += [fake.street_name() for _ in range(_POOL)]
        cols["postcode"] += [str(fake.postcode()) for _ in range(_POOL)]
    words = faker(seed, "user_profiles").words(_POOL, unique=True)
    cols["words"] = [_slug(w) for w in words]
    return _Pools(**{k: pa.array(v) for k, v in cols.items()})


def _struct(**fields: pa.Array) -> pa.StructArray:
    return pa.StructArray.from_arrays(list(fields.values()), names=list(fields))


def _digits(b: Block, column: str, width: int) -> pa.Array:
    n = b.integers(column, 0, 10**width - 1)
    return pc.utf8_lpad(pc.cast(n, pa.string()), width, padding="0")


def _phone(b: Block, column: str) -> pa.Array:
    area = pc.binary_join_element_wise("(", _digits(b, column + ".a", 3), ")", "")
    return pc.binary_join_element_wise(
        area, _digits(b, column + ".b", 3), _digits(b, column + ".c", 4), "-"
    )


def _date_before(b: Block, column: str, years: pa.Array) -> pa.Array:
    """A timestamp ``years`` (+ a fraction of a year) before each record's event time."""
    back = pc.add(
        pc.multiply(years, _YEAR_US),
        pc.cast(pc.floor(pc.multiply(b.uniform(column), float(_YEAR_US))), pa.int64()),
    )
    return pc.cast(pc.subtract(b.ts_us, back), pa.timestamp("us", tz="UTC"))


def user_profiles(b: Block) -> Columns:
    p = _pools(b.seed)
    locale = b.index_into("locale", len(_LOCALES))
    female = pc.equal(b.index_into("gender", 2), 1)

    def pick(column: str) -> pa.Array:
        """An index into a per-locale pool, within the record's locale."""
        return pc.add(pc.multiply(locale, _POOL), b.index_into(column, _POOL))

    first_i, last_i = pick("first"), pick("last")
    first = pc.if_else(female, pc.take(p.female, first_i), pc.take(p.male, first_i))
    first_slug = pc.if_else(female, pc.take(p.female_slug, first_i), pc.take(p.male_slug, first_i))
    last_slug = pc.take(p.last_slug, last_i)
    title = pc.if_else(
        female, b.choice("title.f", pa.array(["Ms", "Mrs", "Miss"])), pa.scalar("Mr")
    )
    country = pc.take(pa.array([loc[1] for loc in _LOCALES]), locale)
    age = b.integers("age", 10, 80)
    seniority = b.integers("registered", 0, 19)
    email_user = pc.binary_join_element_wise(first_slug, last_slug, ".")
    username = pc.binary_join_element_wise(
        b.choice("username", p.words), pc.cast(b.integers("username.n", 100, 999), pa.string()), ""
    )
    return {
        "gender": pc.if_else(female, pa.scalar("female"), pa.scalar("male")),
        "name": _struct(title=title, first=first, last=pc.take(p.last, last_i)),
        "location": _struct(
            street=_struct(
                number=b.integers("street.number", 1, 9999),
                name=pc.take(p.street, pick("street")),
            ),
            city=pc.take(p.city, pick("city")),
            state=pc.take(p.state, pick("state")),
            country=country,
            postcode=pc.take(p.postcode, pick("postcode")),
            coordinates=_struct(
                latitude=pc.round(pc.subtract(pc.multiply(b.uniform("lat"), 180.0), 90.0), 4),
                longitude=pc.round(pc.subtract(pc.multiply(b.uniform("lon"), 360.0), 180.0), 4),
            ),
            timezone=_struct(
                offset=pc.take(pa.array([loc[3] for loc in _LOCALES]), locale),
                description=pc.take(pa.array([loc[4] for loc in _LOCALES]), locale),
            ),
        ),
        "email": pc.binary_join_element_wise(email_user, "example.com", "@"),
        "login": _struct(uuid=b.uuid4("uuid"), username=username),
        "dob": _struct(date=_date_before(b, "dob", age), age=age),
        "registered": _struct(date=_date_before(b, "registered.date", seniority), age=seniority),
        "phone": _phone(b, "phone"),
        "cell": _phone(b, "cell"),
        "id": ids("U", b.seq, 10),
        "nat": pc.take(pa.array([loc[2] for loc in _LOCALES]), locale),
    }
