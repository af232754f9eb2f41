"""Flat event kinds: ratings, transactions, web logs, social posts, ad campaigns, warehouse ops.

Faker runs only to fill small pools (names, words, user agents) once per seed;
records pick from the pools with vectorized random indexes.
"""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc
from faker import Faker

from tidelake.sources.kinds.rand import Block, derive_seed, ids, to_int

Columns = dict[str, pa.Array]


def faker(seed: int, kind: str, locale: str = "en_US") -> Faker:
    fake = Faker(locale)
    fake.seed_instance(derive_seed(seed, kind, "pools", locale))
    return fake


def movie_ratings(b: Block) -> Columns:
    stars = pa.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
    weights = [1, 3, 2, 7, 5, 20, 13, 27, 8, 14]  # the shape of MovieLens ratings
    return {
        "user_id": pc.add(b.index_into("user_id", 10_000, skew=1.5), 1),
        "movie_id": pc.add(b.index_into("movie_id", 5_000, skew=2.0), 1),
        "rating": b.choice("rating", stars, weights),
    }


_CATALOG = {
    "Electronics": (
        ["Headphones", "Smartphone", "Laptop", "Monitor", "Keyboard", "Speaker"],
        120.0,
    ),
    "Books": (["Novel", "Cookbook", "Biography", "Comic", "Guide", "Atlas"], 18.0),
    "Clothing": (["T-Shirt", "Jacket", "Jeans", "Sneakers", "Scarf", "Dress"], 40.0),
    "Home": (["Lamp", "Blender", "Chair", "Rug", "Kettle", "Pillow"], 55.0),
    "Grocery": (["Coffee", "Olive Oil", "Chocolate", "Tea", "Pasta", "Honey"], 9.0),
    "Sports": (["Yoga Mat", "Dumbbell", "Tennis Racket", "Bike Helmet", "Ball", "Gloves"], 35.0),
    "Toys": (["Puzzle", "Board Game", "Doll", "Robot Kit", "Kite", "Blocks"], 25.0),
    "Beauty": (["Shampoo", "Lipstick", "Perfume", "Face Cream", "Soap", "Nail Polish"], 22.0),
}


@lru_cache(maxsize=16)
def _products(seed: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    fake = faker(seed, "transactions")
    names, categories, prices = [], [], []
    for category, (nouns, price) in _CATALOG.items():
        for noun in nouns:
            for _ in range(4):
                names.append(f"{fake.color_name()} {noun}")
                categories.append(category)
                prices.append(price)
    return pa.array(names), pa.array(categories), pa.array(prices)


def transactions(b: Block) -> Columns:
    names, categories, prices = _products(b.seed)
    product = b.index_into("product", len(names), skew=1.3)
    base = pc.take(prices, product)
    payment = pa.array(
        ["credit_card", "debit_card", "paypal", "apple_pay", "bank_transfer", "cash"]
    )
    return {
        "transaction_id": ids("T", b.seq, 12),
        "customer_id": ids("C", pc.add(b.index_into("customer_id", 50_000, skew=1.4), 1), 6),
        "product": pc.take(names, product),
        "category": pc.take(categories, product),
        "amount": pc.round(pc.multiply(base, b.lognormal("amount", 1.0, 0.45)), 2),
        "payment_method": b.choice("payment_method", payment, [40, 25, 15, 8, 7, 5]),
    }


@lru_cache(maxsize=16)
def _web_pools(seed: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    fake = faker(seed, "web_logs")
    ips = pa.array([fake.ipv4_public() for _ in range(2_000)])
    fixed = ["/", "/login", "/logout", "/cart", "/checkout", "/search", "/api/v1/items"]
    paths = pa.array(fixed + [f"/{fake.uri_path()}" for _ in range(300)])
    agents = pa.array([fake.user_agent() for _ in range(200)])
    return ips, paths, agents


def web_logs(b: Block) -> Columns:
    ips, paths, agents = _web_pools(b.seed)
    statuses = pa.array([200, 201, 204, 301, 304, 400, 401, 403, 404, 500, 502, 503], pa.int32())
    status = b.choice("status", statuses, [850, 20, 10, 20, 30, 15, 10, 5, 30, 7, 2, 1])
    size = to_int(b.lognormal("bytes", 4_000.0, 1.2))
    empty = pc.is_in(status, value_set=pa.array([204, 304], pa.int32()))
    return {
        "ip": b.choice("ip", ips),
        "method": b.choice(
            "method", pa.array(["GET", "POST", "PUT", "DELETE", "PATCH"]), [80, 12, 4, 2, 2]
        ),
        "path": pc.take(paths, b.index_into("path", len(paths), skew=2.0)),
        "status": status,
        "bytes": pc.if_else(empty, 0, size),
        "user_agent": b.choice("user_agent", agents),
    }


@lru_cache(maxsize=16)
def _social_pools(seed: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    fake = faker(seed, "social_posts")
    users = pa.array(sorted({fake.user_name() for _ in range(3_000)}))
    sentences = pa.array([fake.sentence(nb_words=12) for _ in range(2_000)])
    tags = pa.array([""] * 10 + [f"#{fake.word()}" for _ in range(200)])
    return users, sentences, tags


def social_posts(b: Block) -> Columns:
    users, sentences, tags = _social_pools(b.seed)
    likes = to_int(b.lognormal("likes", 20.0, 1.6))
    text = pc.utf8_trim_whitespace(
        pc.binary_join_element_wise(b.choice("text", sentences), b.choice("tag", tags), " ")
    )
    return {
        "post_id": ids("P", b.seq, 12),
        "user": pc.take(users, b.index_into("user", len(users), skew=1.5)),
        "platform": b.choice(
            "platform",
            pa.array(["twitter", "instagram", "facebook", "tiktok", "linkedin", "reddit"]),
            [30, 25, 20, 15, 5, 5],
        ),
        "text": text,
        "likes": likes,
        "shares": to_int(pc.multiply(likes, pc.multiply(b.uniform("shares"), 0.3))),
        "comments": to_int(pc.multiply(likes, pc.multiply(b.uniform("comments"), 0.15))),
    }


@lru_cache(maxsize=16)
def _campaigns(seed: int) -> tuple[pa.Array, pa.Array]:
    fake = faker(seed, "ad_campaigns")
    channels = ["google_ads", "facebook", "instagram", "tiktok", "linkedin", "youtube", "email"]
    return (
        pa.array([f"CMP-{i:04d}" for i in range(1, 61)]),
        pa.array([fake.random_element(channels) for _ in range(60)]),
    )


def ad_campaigns(b: Block) -> Columns:
    campaign_ids, channels = _campaigns(b.seed)
    campaign = b.index_into("campaign", len(campaign_ids))
    impressions = pc.add(to_int(b.lognormal("impressions", 2_000.0, 1.0)), 100)
    ctr = pc.add(pc.multiply(b.uniform("ctr"), 0.075), 0.005)
    clicks = to_int(pc.multiply(impressions, ctr))
    cpc = pc.add(pc.multiply(b.uniform("cpc"), 2.8), 0.2)
    cvr = pc.add(pc.multiply(b.uniform("cvr"), 0.14), 0.01)
    return {
        "campaign_id": pc.take(campaign_ids, campaign),
        "channel": pc.take(channels, campaign),
        "impressions": impressions,
        "clicks": clicks,
        "spend": pc.round(pc.multiply(clicks, cpc), 2),
        "conversions": to_int(pc.multiply(clicks, cvr)),
    }


@lru_cache(maxsize=16)
def _operators(seed: int) -> pa.Array:
    fake = faker(seed, "warehouse_ops", "fr_FR")
    return pa.array([fake.name() for _ in range(30)])


def warehouse_ops(b: Block) -> Columns:
    op = b.weighted_index("op", [35, 55, 10])
    received = b.integers("receive", 10, 200)
    shipped = b.integers("ship", 1, 20)
    adjusted = pc.subtract(b.integers("adjust", 1, 10), 6)
    adjusted = pc.if_else(pc.greater_equal(adjusted, 0), pc.add(adjusted, 1), adjusted)
    quantity = pc.if_else(pc.equal(op, 0), received, pc.if_else(pc.equal(op, 1), shipped, adjusted))
    return {
        "op_id": ids("OP", b.seq, 12),
        "operator": b.choice("operator", _operators(b.seed)),
        "product_id": ids("SKU-", pc.add(b.index_into("product", 500, skew=1.5), 1), 5),
        "op": pc.take(pa.array(["receive", "ship", "adjust"]), op),
        "quantity": quantity,
    }
