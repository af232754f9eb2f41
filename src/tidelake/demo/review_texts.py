"""Generated customer reviews, some carrying the personal data customers paste into them.

Seeded, so a demo and a test compute the same texts. ``planted`` returns, with each text,
the values hidden in it: what ``redact`` must take out before anything reaches the lake.
"""

from __future__ import annotations

import random

from faker import Faker

PRODUCTS = ["casque audio", "machine à café", "aspirateur", "trottinette", "montre", "lampe"]
PROBLEMS = ["batterie", "livraison", "bruit", "écran", "notice", "emballage"]
_CONTEXT = [
    "Commande CMD-{order} reçue le {day}/{month}, {price},{cents} € : {problem} à revoir.",
    "Le {product} marche depuis {n} jours, le {problem} me déçoit un peu.",
    "Note {n}/5. Livré en {n} jours, réf. {ref}-{n}, facture n° {invoice}.",
    "J'ai appelé le SAV à {hour}h{minute}, ticket {invoice}, pour le {problem}.",
    "Très bon {product} pour {price} €, rien à redire sauf le {problem}.",
]
_PASTED = [
    "Contactez-moi au {phone} ou par mail {email}. Remboursez sur ma carte {card} ou mon IBAN"
    " {iban}, merci.",
    "Remboursement: IBAN {iban}. Carte débitée {card}. Joignable au {phone}, {email}",
    "mon numéro : {phone}, mon adresse {email} ; carte {card} ; IBAN {iban}",
    "{email} / {phone} — rib {iban} (carte {card})",
]


def _spaced(value: str, rng: random.Random) -> str:
    """A card number or IBAN as people write it: compact, or in groups of four."""
    if rng.random() < 0.5:
        return value
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4))


def clean(fake: Faker, rng: random.Random) -> str:
    """A review without personal data (but with the numbers reviews have: orders, prices)."""
    return (
        " ".join(
            rng.choice(_CONTEXT).format(
                order=rng.randrange(10**5, 10**6),
                day=rng.randrange(1, 29),
                month=rng.randrange(1, 13),
                price=rng.randrange(5, 2000),
                cents=f"{rng.randrange(100):02d}",
                problem=rng.choice(PROBLEMS),
                product=rng.choice(PRODUCTS),
                n=rng.randrange(1, 6),
                ref=rng.randrange(1000, 9999),
                invoice=rng.randrange(10**11, 10**12),
                hour=rng.randrange(8, 20),
                minute=f"{rng.randrange(60):02d}",
            )
            for _ in range(2)
        )
        + " "
        + fake.sentence(nb_words=8)
    )


def planted(fake: Faker, rng: random.Random) -> tuple[str, list[str]]:
    """A review with an e-mail address, a phone number, a card number and an IBAN in it."""
    values = {
        "email": fake.email(),
        "phone": fake.phone_number(),
        "card": _spaced(fake.credit_card_number(), rng),
        "iban": _spaced(fake.iban(), rng),
    }
    return f"{clean(fake, rng)} {rng.choice(_PASTED).format(**values)}", list(values.values())


def corpus(n: int, seed: int = 16) -> tuple[list[str], list[list[str]], list[str]]:
    """``n`` texts with planted values, those values, and ``n`` clean texts."""
    fake, rng = Faker("fr_FR"), random.Random(seed)
    fake.seed_instance(seed)
    texts, values = zip(*(planted(fake, rng) for _ in range(n)), strict=True)
    return list(texts), list(values), [clean(fake, rng) for _ in range(n)]
