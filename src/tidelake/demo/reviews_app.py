"""The reviews scenario's outside world: the company's app and a third-party review site.

- ``POST /reviews``: the mobile app's endpoint (the reference's FastAPI service), a review
  validated by pydantic and inserted into the ``reviews`` table of the pipeline's database,
  where CDC picks it up.
- ``POST /alerts``: the on-call team's webhook receiver: keeps each batch once by its
  ``Idempotency-Key`` (``app.state.alerts``).
- ``GET /site/reviews?page=N``: a review site's HTML pages, ten reviews a page, newest last,
  with a ``next`` link; it gains ``site_rate`` reviews a second. ETag and 304 for unchanged
  pages; its robots.txt disallows ``/site/account/``.

Reviews are seeded functions of their number (``app_review(i)``, ``site_review(k)``), so a
test computes the same inputs the demo sends.
"""

from __future__ import annotations

import hashlib
import html
import random
import threading
import time
import uuid
from typing import Any

import pyarrow as pa
from faker import Faker
from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, Field

from tidelake.db import connect_db
from tidelake.demo.review_texts import PROBLEMS, PRODUCTS, clean, planted

PER_PAGE = 10
_BAD = {"casque audio": -1.5, "trottinette": -1.0}
"""Products customers like less: their ratings trend down, their problems recur."""


def _review(seed: str, i: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{i}")
    fake = Faker("fr_FR")
    fake.seed_instance(rng.randrange(2**32))
    product = rng.choice(PRODUCTS)
    rating = min(5, max(1, round(rng.gauss(3.8 + _BAD.get(product, 0.0), 1.0))))
    if rating <= 2:
        text = f"Déçu, {rng.choice(PROBLEMS)} {product} nul. " + clean(fake, rng)
    else:
        text = clean(fake, rng)
    if rng.random() < 0.2:
        text = planted(fake, rng)[0]
    return {"product": product, "rating": rating, "text": text, "author": fake.name()}


def app_review(i: int) -> dict[str, Any]:
    """The app's ``i``-th review, as the demo's traffic posts it."""
    r = _review("app", i)
    return {"product": r["product"], "rating": r["rating"], "text": r["text"]}


def site_review(k: int) -> dict[str, Any]:
    """The review site's ``k``-th review."""
    return _review("site", k) | {"id": f"s{k}"}


class ReviewIn(BaseModel):
    product: str = Field(min_length=1, max_length=200)
    rating: int = Field(ge=1, le=5)
    text: str = Field(min_length=1, max_length=5000)


def _page(k0: int, k1: int, page: int, last: bool) -> str:
    items = "".join(
        f'<article class="review" id="{r["id"]}"><h3 class="product">{html.escape(r["product"])}'
        f'</h3><span class="rating">{r["rating"]}</span><span class="author">'
        f'{html.escape(r["author"])}</span><p class="text">{html.escape(r["text"])}</p></article>'
        for r in map(site_review, range(k0, k1))
    )
    more = "" if last else f'<a class="next" href="/site/reviews?page={page + 1}">next</a>'
    return (
        f"<html><body><h1>Avis clients - page {page}</h1>{items}{more}"
        '<a href="/site/account/login">mon compte</a></body></html>'
    )


def create_app(
    database: str, site_start: int = 25, site_rate: float = 0.5, site_limit: int | None = None
) -> FastAPI:
    """The app endpoint writing to ``database`` and the site (``site_start`` reviews at
    start, ``site_rate`` more a second, at most ``site_limit``)."""
    app = FastAPI(title="Reviews app and review site (tidelake demo)")
    db = connect_db(database)
    lock = threading.Lock()
    started = time.time()

    @app.post("/reviews", status_code=201, summary="A customer review from the mobile app")
    def post_review(review: ReviewIn) -> dict[str, str]:
        review_id = str(uuid.uuid4())
        row = pa.Table.from_pylist([{"review_id": review_id, **review.model_dump()}])
        with lock, db.transaction():
            db.insert("reviews", row, None)
        return {"review_id": review_id}

    app.state.alerts = {}

    @app.post("/alerts", summary="Negative reviews, from the alerts webhook")
    def alerts(batch: list[dict[str, Any]], request: Request) -> dict[str, int]:
        with lock:
            app.state.alerts.setdefault(request.headers.get("idempotency-key", ""), batch)
            return {"alerts": sum(len(b) for b in app.state.alerts.values())}

    @app.get("/robots.txt", include_in_schema=False)
    def robots() -> Response:
        return Response("User-agent: *\nDisallow: /site/account/\n", media_type="text/plain")

    @app.get("/site/reviews", summary="The review site's pages (HTML)")
    def site(request: Request, page: int = Query(1, ge=1)) -> Response:
        available = site_start + int((time.time() - started) * site_rate)
        if site_limit is not None:
            available = min(available, site_limit)
        pages = max(1, -(-available // PER_PAGE))
        if page > pages:
            return Response("no such page", status_code=404, media_type="text/plain")
        k0 = (page - 1) * PER_PAGE
        body = _page(k0, min(available, k0 + PER_PAGE), page, page == pages)
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="text/html; charset=utf-8", headers={"ETag": etag})

    return app


def post_traffic(url: str, stop: threading.Event, rate: float, limit: int | None = None) -> None:
    """The app's users: ``app_review(i)`` POSTed ``rate`` a second until ``stop`` (or ``limit``)."""
    import httpx

    with httpx.Client(timeout=10) as client:
        i = 0
        while not stop.is_set() and (limit is None or i < limit):
            try:
                client.post(f"{url}/reviews", json=app_review(i)).raise_for_status()
                i += 1
            except httpx.HTTPError:
                pass  # the app is starting or stopping: the same review goes again
            stop.wait(1.0 / rate if rate > 0 else 0)
