"""The movies scenario's ratings API: ``GET /rating`` returns the ratings made since the last call.

It stands in for the reference architecture's FastAPI service on EC2 (the one
part of that system that is outside tidelake), with the same record shape:
``user_id, movieId, rating, timestamp``. Ratings arrive at ``rate`` per second,
from a seeded generator, so runs are reproducible.
"""

from __future__ import annotations

import random
import threading
import time

from fastapi import FastAPI, Query


def create_app(movie_ids: int = 80, rate: float = 50.0, seed: int = 7) -> FastAPI:
    app = FastAPI(title="Movie ratings API (tidelake demo)")
    rng = random.Random(seed)
    lock = threading.Lock()
    started = time.time()
    emitted = 0
    # Some movies are liked more than others: a per-movie bias makes top-rated panels meaningful.
    bias = {m: rng.uniform(-1.0, 1.0) for m in range(1, movie_ids + 1)}

    @app.get("/rating", summary="Ratings made since the previous call (at most `limit`)")
    def rating(limit: int = Query(1000, ge=1, le=10_000)) -> list[dict[str, float | int]]:
        nonlocal emitted
        with lock:
            due = int((time.time() - started) * rate) - emitted
            n = max(0, min(due, limit))
            emitted += n
            now = int(time.time())
            out = []
            for _ in range(n):
                movie = rng.randint(1, movie_ids)
                stars = min(5.0, max(0.5, round((rng.gauss(3.5, 1.0) + bias[movie]) * 2) / 2))
                out.append(
                    {
                        "user_id": rng.randint(1, 600),
                        "movieId": movie,
                        "rating": stars,
                        "timestamp": now,
                    }
                )
            return out

    return app
