"""Seeded generator of a synthetic e-commerce data set (catalogue, shoppers, events).

Items get a category, brand, price, title and short description built from word lists;
popularity is Zipf-like so the long tail looks like a real shop's (the top 20% of items
hold well over half the events); each user has category tastes and a favourite style
(category, brand, colour) whose items, popular or not, get a share of their events;
events are
view / click / cart / purchase with timestamps. Everything is vectorised numpy, so it
scales from ten rows (tests) to 1M items / 10M events (scale runs), and the same seed
always gives the same tables.

Used through ``python -m training.data --dataset synthetic --out DIR`` (see training/data.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from core import schema

# category -> nouns used in titles; the category name itself is an item text column
CATEGORIES: dict[str, tuple[str, ...]] = {
    "electronics": ("headphones", "speaker", "charger", "webcam", "power bank", "smartwatch"),
    "kitchen": ("kettle", "chef knife", "frying pan", "blender", "coffee grinder", "teapot"),
    "fashion": ("sneakers", "rain jacket", "wool scarf", "denim shirt", "leather belt", "cap"),
    "books": ("cookbook", "thriller novel", "travel guide", "poetry book", "atlas", "comic"),
    "sports": ("yoga mat", "running shorts", "water bottle", "dumbbell set", "bike light"),
    "beauty": ("face cream", "shampoo", "lip balm", "perfume", "hair dryer", "nail kit"),
    "home": ("desk lamp", "throw blanket", "cushion", "wall clock", "plant pot", "rug"),
    "toys": ("puzzle", "building blocks", "plush bear", "kite", "board game", "toy car"),
    "garden": ("hose", "pruning shears", "seed kit", "watering can", "bird feeder"),
    "pets": ("dog leash", "cat tree", "pet bed", "chew toy", "aquarium filter"),
}
BRANDS = (
    "Acme", "Nordlys", "Kestrel", "Umbra", "Pilot", "Verde", "Halcyon", "Brisk", "Oakley & Co",
    "Lumen", "Tidal", "Marlow", "Quill", "Sable", "Juniper", "Atlas", "Cobalt", "Fenwick",
)  # fmt: skip
ADJECTIVES = (
    "compact", "classic", "premium", "lightweight", "eco", "deluxe", "vintage", "smart",
    "rugged", "minimal", "cozy", "portable", "handmade", "essential", "pro",
)  # fmt: skip
COLOURS = ("black", "white", "navy", "olive", "red", "grey", "sand", "teal", "mustard")
FEATURES = (
    "built to last", "easy to clean", "gift ready", "made from recycled materials",
    "with a two-year warranty", "loved by reviewers", "perfect for everyday use",
    "small enough to travel", "designed in Europe", "great value for money",
)  # fmt: skip
COUNTRIES = ("DE", "FR", "GB", "US", "NL", "ES", "IT", "SE", "PL", "JP")
# funnel: most events are views, few are purchases
EVENT_TYPES = np.array(["view", "click", "cart", "purchase"])
EVENT_PROBS = np.array([0.70, 0.18, 0.07, 0.05])
BASE_PRICE = np.array([60.0, 35.0, 45.0, 15.0, 30.0, 20.0, 40.0, 25.0, 22.0, 18.0])
START = pd.Timestamp("2024-01-01", tz="UTC")
SPAN_SECONDS = 180 * 24 * 3600
ZIPF_EXPONENT = 1.1  # popularity weight of the item at rank r is r ** -ZIPF_EXPONENT
TASTE_CONCENTRATION = 0.3  # Dirichlet alpha: small -> users focus on few categories
EXPLORE = 0.2  # share of events drawn from overall popularity, ignoring the user's tastes
# share of events that follow the user's style: a uniform draw among the items of one
# (category, brand, colour) cell the user favours, popular or not. It is what makes tail
# items findable: a user who loves navy Nordlys kitchen things buys the rarely bought ones
# too, and their titles say so (without it a tail item has no signal at all that sets it
# apart from the thousands of others of its category)
STYLE = 0.3
CHUNK = 1_000_000  # events drawn per batch, bounds memory at large sizes


def _ids(prefix: str, n: int) -> np.ndarray:
    """String ids like ``u0007`` with a fixed width, so they sort as numbers do."""
    width = max(4, len(str(n)))
    return np.char.add(prefix, np.char.zfill(np.arange(1, n + 1).astype(str), width)).astype(object)


def _pick(rng: np.random.Generator, words: tuple[str, ...], n: int) -> np.ndarray:
    return np.asarray(words, dtype=object)[rng.integers(0, len(words), n)]


def generate_items(n_items: int, rng: np.random.Generator) -> pd.DataFrame:
    """The catalogue: id, title, category, brand, price and a short description."""
    names = np.asarray(list(CATEGORIES), dtype=object)
    cat = rng.integers(0, len(names), n_items)
    nouns = np.empty(n_items, dtype=object)
    for c, words in enumerate(CATEGORIES.values()):
        mask = cat == c
        nouns[mask] = _pick(rng, words, int(mask.sum()))
    brand = _pick(rng, BRANDS, n_items)
    adj = pd.Series(_pick(rng, ADJECTIVES, n_items))
    colour = pd.Series(_pick(rng, COLOURS, n_items))
    feature = pd.Series(_pick(rng, FEATURES, n_items))
    noun = pd.Series(nouns)
    price = np.round(BASE_PRICE[cat] * rng.lognormal(0.0, 0.5, n_items), 2)
    title = pd.Series(brand) + " " + adj + " " + colour + " " + noun
    description = "A " + adj + " " + noun + " in " + colour + ", " + feature + "."
    return pd.DataFrame(
        {
            schema.ITEM_ID: _ids("i", n_items),
            "title": title.to_numpy(),
            "category": names[cat],
            "brand": brand,
            "price": price,
            "description": description.to_numpy(),
        }
    )


def generate_users(n_users: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Users with age and country, and their hidden category tastes (rows sum to 1)."""
    tastes = rng.dirichlet(np.full(len(CATEGORIES), TASTE_CONCENTRATION), n_users)
    users = pd.DataFrame(
        {
            schema.USER_ID: _ids("u", n_users),
            "age": rng.integers(18, 75, n_users).astype("int64"),
            "country": _pick(rng, COUNTRIES, n_users),
        }
    )
    return users, tastes


def _popularity(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like weights over a random ordering of the items (sum 1)."""
    ranks = rng.permutation(n_items) + 1
    weights = ranks.astype(np.float64) ** -ZIPF_EXPONENT
    return weights / weights.sum()


def _event_users(n_users: int, n_events: int, rng: np.random.Generator) -> np.ndarray:
    """User index per event: everyone at least once (when possible), then by activity."""
    activity = rng.lognormal(0.0, 1.0, n_users)
    first = np.arange(min(n_users, n_events))
    rest = rng.choice(n_users, n_events - len(first), p=activity / activity.sum())
    return np.concatenate([first, rest])


def _sample_items(
    users: np.ndarray, tastes: np.ndarray, cat: np.ndarray, pop: np.ndarray, rng
) -> np.ndarray:
    """Item index per event: category by taste x its popularity mass, then item by popularity."""
    order = np.argsort(cat, kind="stable")  # items grouped by category
    cum = np.cumsum(pop[order])
    bounds = np.searchsorted(cat[order], np.arange(tastes.shape[1] + 1))
    lo = np.where(bounds[:-1] > 0, cum[np.maximum(bounds[:-1] - 1, 0)], 0.0)
    hi = np.where(bounds[1:] > 0, cum[np.maximum(bounds[1:] - 1, 0)], 0.0)
    out = np.empty(len(users), dtype=np.int64)
    starts = range(0, len(users), CHUNK)
    for start in tqdm(starts, desc="synthetic events", unit="M", disable=len(starts) < 3):
        u = users[start : start + CHUNK]
        # p(item | user) ~ taste[category] * popularity: tastes personalise, Zipf survives
        taste = tastes[u] * (hi - lo)
        cum_taste = np.cumsum(taste, axis=1)
        draw = rng.random(len(u))[:, None] * cum_taste[:, -1:]
        c = np.minimum((cum_taste < draw).sum(axis=1), tastes.shape[1] - 1)
        target = lo[c] + rng.random(len(u)) * (hi[c] - lo[c])
        explore = rng.random(len(u)) < EXPLORE
        target[explore] = rng.random(int(explore.sum())) * cum[-1]
        pos = np.minimum(np.searchsorted(cum, target, side="right"), len(cum) - 1)
        out[start : start + CHUNK] = order[pos]
    return out


def _style_cells(items: pd.DataFrame) -> np.ndarray:
    """Each item's (category, brand, colour) cell number."""
    codes = [
        pd.Categorical(items[column], categories=list(values)).codes.astype(np.int64)
        for column, values in (("category", CATEGORIES), ("brand", BRANDS))
    ]
    colour = np.zeros(len(items), dtype=np.int64)
    for c, name in enumerate(COLOURS):  # the colour is the title's third-last word group
        colour[items["title"].str.contains(f" {name} ", regex=False).to_numpy()] = c
    return (codes[0] * len(BRANDS) + codes[1]) * len(COLOURS) + colour


def _follow_styles(
    users: np.ndarray, out: np.ndarray, items: pd.DataFrame, tastes: np.ndarray, rng
) -> None:
    """Replace a ``STYLE`` share of the events, in place, by a uniform draw from the
    user's favourite cell (its category drawn from the user's tastes, brand and colour
    uniformly); an empty cell keeps the popularity draw."""
    n_cells = len(CATEGORIES) * len(BRANDS) * len(COLOURS)
    cells = _style_cells(items)
    order = np.argsort(cells, kind="stable")
    starts = np.searchsorted(cells[order], np.arange(n_cells + 1))
    n_users = tastes.shape[0]
    fav_cat = (tastes.cumsum(axis=1) < rng.random(n_users)[:, None]).sum(axis=1)
    fav_cat = np.minimum(fav_cat, len(CATEGORIES) - 1)
    favourite = (fav_cat * len(BRANDS) + rng.integers(0, len(BRANDS), n_users)) * len(
        COLOURS
    ) + rng.integers(0, len(COLOURS), n_users)
    style = rng.random(len(users)) < STYLE
    cell = favourite[users[style]]
    size = starts[cell + 1] - starts[cell]
    pick = starts[cell] + np.floor(rng.random(len(cell)) * size).astype(np.int64)
    rows = np.flatnonzero(style)[size > 0]
    out[rows] = order[pick[size > 0]]


def generate(
    n_users: int, n_items: int, n_events: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Build (interactions, items, users); the same arguments always give the same tables."""
    if min(n_users, n_items, n_events) < 1:
        raise ValueError(
            f"synthetic sizes must be >= 1, got n_users={n_users}, n_items={n_items}, "
            f"n_events={n_events}: pass positive --n-users/--n-items/--n-events"
        )
    rng = np.random.default_rng(seed)
    items = generate_items(n_items, rng)
    users, tastes = generate_users(n_users, rng)
    cat = pd.Categorical(items["category"], categories=list(CATEGORIES)).codes
    pop = _popularity(n_items, rng)
    ev_users = _event_users(n_users, n_events, rng)
    ev_items = _sample_items(ev_users, tastes, np.asarray(cat, dtype=np.int64), pop, rng)
    _follow_styles(ev_users, ev_items, items, tastes, rng)
    kind = rng.choice(len(EVENT_TYPES), n_events, p=EVENT_PROBS)
    seconds = rng.integers(0, SPAN_SECONDS, n_events)
    price = items["price"].to_numpy()
    interactions = pd.DataFrame(
        {
            schema.USER_ID: users[schema.USER_ID].to_numpy()[ev_users],
            schema.ITEM_ID: items[schema.ITEM_ID].to_numpy()[ev_items],
            schema.TIMESTAMP: START + pd.to_timedelta(seconds, unit="s"),
            schema.EVENT: EVENT_TYPES[kind].astype(object),
            # the price paid on a purchase; nothing on the other events
            schema.VALUE: np.where(kind == len(EVENT_TYPES) - 1, price[ev_items], np.nan),
        }
    )
    return interactions, items, users
