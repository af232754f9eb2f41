"""How one poll of the http source walks through pages: one small strategy per style.

A strategy holds the URL and query parameters of the next request and, given what a page
returned, moves to the following one or says the poll is done. ``max_pages`` is enforced
by the source, whatever the style.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urljoin

from pydantic import BaseModel, ConfigDict, Field

from tidelake.sources.file import dig


class Pagination(BaseModel):
    """How one poll walks through pages."""

    model_config = ConfigDict(extra="forbid")

    style: Literal["none", "next_url", "page", "offset"] = Field(
        default="none",
        description="next_url: follow a URL found in each response; page / offset: increment a "
        "query parameter until a page comes back empty (or short of page_size)",
    )
    next_url: str = Field(
        default="next", description="next_url: dotted JSON path of the next page's URL"
    )
    param: str | None = Field(
        default=None, description="page / offset: query parameter (default: its style)"
    )
    start: int | None = Field(
        default=None, description="first page (default 1) or offset (default 0)"
    )
    page_size: int | None = Field(
        default=None,
        gt=0,
        description="records per page: a shorter page ends the poll; sent as size_param",
    )
    size_param: str | None = Field(
        default=None, description="query parameter carrying page_size (e.g. limit)"
    )
    max_pages: int = Field(default=100, gt=0, description="pages per poll at most")


class Pages:
    """A single request per poll (style ``none``); the base of the other styles."""

    def __init__(self, config: Pagination, url: str, params: dict[str, Any]) -> None:
        self.config, self.url, self.params = config, url, dict(params)

    def advance(self, response_url: str, doc: Any, rows: int) -> bool:
        """Move to the page after the one that returned ``doc`` (``rows`` records); False if
        there is none."""
        return False


class NextUrl(Pages):
    """Follow the URL found at ``next_url`` in each response until it is missing or empty."""

    def advance(self, response_url: str, doc: Any, rows: int) -> bool:
        try:
            value = dig(doc, self.config.next_url)
        except KeyError:
            return False
        if not isinstance(value, str) or not value:
            return False
        self.url, self.params = urljoin(response_url, value), {}
        return True


class PageNumber(Pages):
    """``?page=1, 2, ...`` until a page is empty or shorter than ``page_size``."""

    first = 1

    def __init__(self, config: Pagination, url: str, params: dict[str, Any]) -> None:
        super().__init__(config, url, params)
        self.key = config.param or config.style
        self.value = config.start if config.start is not None else self.first
        if config.page_size and config.size_param:
            self.params[config.size_param] = config.page_size
        self.params[self.key] = self.value

    def step(self, rows: int) -> int:
        return 1

    def advance(self, response_url: str, doc: Any, rows: int) -> bool:
        self.value += self.step(rows)
        self.params[self.key] = self.value
        size = self.config.page_size
        return rows > 0 and (size is None or rows >= size)


class Offset(PageNumber):
    """``?offset=0, n, 2n, ...`` (n = ``page_size``, else the rows of the last page)."""

    first = 0

    def step(self, rows: int) -> int:
        return self.config.page_size or rows


STYLES: dict[str, type[Pages]] = {
    "none": Pages,
    "next_url": NextUrl,
    "page": PageNumber,
    "offset": Offset,
}


def start(config: Pagination, url: str, params: dict[str, Any]) -> Pages:
    """The first page of a new poll."""
    return STYLES[config.style](config, url, params)
