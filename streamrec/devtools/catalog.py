"""The synthetic shop's catalog data: categories with product nouns and adjectives, brand names,
and the rule that turns a random draw into a :class:`~streamrec.schemas.CatalogItem`.

Pure data and pure functions of the random generator passed in: the traffic model
(:mod:`streamrec.devtools.simulator`) owns the generators and so the reproducibility.

>>> import numpy as np
>>> brands = make_brands(np.random.default_rng(0), 4, 2)
>>> len(brands), all(b[0].isupper() for b in brands)
(3, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamrec.schemas import CatalogItem

# (category, product nouns, adjectives, variants, median price). The first 12 are the default
# catalog; ``n_categories`` takes a prefix of this table.
_CATEGORIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], float], ...] = (
    (
        "skincare",
        (
            "Face Serum",
            "Moisturizer",
            "Cleanser",
            "Toner",
            "Eye Cream",
            "Sunscreen SPF 50",
            "Night Cream",
            "Sheet Mask",
        ),
        ("Hydrating", "Brightening", "Gentle", "Vitamin C", "Retinol", "Soothing", "Oil-Free"),
        ("30ml", "50ml", "100ml", "150ml"),
        25.0,
    ),
    (
        "haircare",
        ("Shampoo", "Conditioner", "Hair Mask", "Hair Oil", "Leave-In Spray", "Styling Cream"),
        ("Repairing", "Volumizing", "Argan", "Curl-Defining", "Anti-Frizz", "Color-Safe"),
        ("250ml", "400ml", "1L"),
        14.0,
    ),
    (
        "makeup",
        ("Lipstick", "Mascara", "Foundation", "Eyeliner", "Blush", "Concealer", "Eyeshadow Palette"),
        ("Matte", "Long-Wear", "Velvet", "Waterproof", "Luminous", "Natural"),
        ("Shade 01", "Shade 02", "Shade 03", "Shade 04"),
        18.0,
    ),
    (
        "fragrance",
        ("Eau de Parfum", "Eau de Toilette", "Body Mist", "Cologne"),
        ("Amber", "Citrus", "Floral", "Woody", "Fresh", "Vanilla"),
        ("30ml", "50ml", "100ml"),
        55.0,
    ),
    (
        "running shoes",
        ("Running Shoe", "Trail Shoe", "Racing Flat", "Stability Trainer"),
        ("Lightweight", "Cushioned", "Carbon-Plated", "Responsive", "Waterproof"),
        ("Men's", "Women's", "Unisex"),
        110.0,
    ),
    (
        "sportswear",
        ("Running Tee", "Training Shorts", "Leggings", "Hoodie", "Sports Bra", "Track Jacket"),
        ("Breathable", "Seamless", "Thermal", "Quick-Dry", "Compression"),
        ("S", "M", "L", "XL"),
        35.0,
    ),
    (
        "coffee",
        ("Whole Bean Coffee", "Ground Coffee", "Espresso Pods", "Cold Brew Concentrate", "Instant Coffee"),
        ("Dark Roast", "Medium Roast", "Single-Origin", "Decaf", "Organic"),
        ("250g", "500g", "1kg"),
        12.0,
    ),
    (
        "tea",
        ("Green Tea", "Black Tea", "Herbal Infusion", "Matcha Powder", "Chai Blend"),
        ("Organic", "Loose-Leaf", "Jasmine", "Earl Grey", "Sencha"),
        ("20 bags", "50 bags", "100g"),
        8.0,
    ),
    (
        "kitchen",
        ("Chef's Knife", "Frying Pan", "Cutting Board", "Saucepan", "Mixing Bowl Set", "Dutch Oven"),
        ("Stainless Steel", "Non-Stick", "Cast Iron", "Bamboo", "Ceramic"),
        ("20cm", "24cm", "28cm"),
        45.0,
    ),
    (
        "home decor",
        ("Scented Candle", "Throw Pillow", "Table Lamp", "Wall Mirror", "Vase", "Photo Frame"),
        ("Minimalist", "Rustic", "Velvet", "Brass", "Handmade"),
        (),
        30.0,
    ),
    (
        "electronics accessories",
        ("Wireless Earbuds", "Phone Case", "USB-C Cable", "Power Bank", "Bluetooth Speaker", "Charging Stand"),
        ("Fast-Charge", "Noise-Cancelling", "Rugged", "Slim", "Magnetic"),
        ("Black", "White", "Blue"),
        30.0,
    ),
    (
        "books",
        ("Novel", "Cookbook", "Travel Guide", "Biography", "Graphic Novel", "Poetry Collection"),
        ("Bestselling", "Illustrated", "Award-Winning", "Paperback", "Hardcover"),
        (),
        15.0,
    ),
    (
        "bedding",
        ("Duvet Cover", "Fitted Sheet", "Pillowcase Set", "Weighted Blanket", "Mattress Topper"),
        ("Cotton Sateen", "Linen", "Bamboo", "Cooling", "Flannel"),
        ("Single", "Double", "King"),
        60.0,
    ),
    (
        "toys",
        ("Building Set", "Puzzle", "Plush Toy", "Board Game", "Remote Control Car", "Art Kit"),
        ("Educational", "Wooden", "Glow-in-the-Dark", "Classic", "Deluxe"),
        ("Ages 3+", "Ages 6+", "Ages 8+"),
        25.0,
    ),
    (
        "pet supplies",
        ("Dry Dog Food", "Cat Litter", "Chew Toy", "Pet Bed", "Cat Tree", "Grooming Brush"),
        ("Grain-Free", "Clumping", "Orthopedic", "Durable", "Natural"),
        ("Small", "Medium", "Large"),
        28.0,
    ),
    (
        "outdoor",
        ("Camping Tent", "Sleeping Bag", "Hiking Backpack", "Headlamp", "Water Bottle", "Trekking Poles"),
        ("Ultralight", "Insulated", "Waterproof", "Packable", "Rechargeable"),
        (),
        70.0,
    ),
    (
        "yoga & fitness",
        ("Yoga Mat", "Resistance Bands", "Dumbbell Set", "Foam Roller", "Jump Rope", "Kettlebell"),
        ("Non-Slip", "Adjustable", "Eco", "Heavy-Duty", "Compact"),
        (),
        35.0,
    ),
    (
        "baby",
        ("Diapers", "Baby Wipes", "Baby Lotion", "Sippy Cup", "Swaddle Blanket"),
        ("Sensitive", "Organic", "Fragrance-Free", "Spill-Proof", "Muslin"),
        ("Size 1", "Size 3", "Size 5"),
        20.0,
    ),
    (
        "snacks",
        ("Protein Bar", "Trail Mix", "Dark Chocolate", "Granola", "Rice Crackers"),
        ("Salted Caramel", "Almond", "Vegan", "Gluten-Free", "Honey"),
        ("6-pack", "12-pack", "Family Size"),
        6.0,
    ),
    (
        "watches & jewelry",
        ("Wristwatch", "Necklace", "Stud Earrings", "Bracelet", "Ring"),
        ("Sterling Silver", "Gold-Plated", "Minimalist", "Vintage", "Chronograph"),
        (),
        80.0,
    ),
)
MAX_CATEGORIES = len(_CATEGORIES)
_BRAND_HEADS = (
    "Lum",
    "Ver",
    "Nor",
    "Sol",
    "Aur",
    "Kai",
    "Zen",
    "Mar",
    "Bel",
    "Ori",
    "Vel",
    "Ast",
    "Cal",
    "Dor",
    "Eli",
    "Fio",
    "Hal",
    "Ivo",
    "Jun",
    "Kor",
    "Lyr",
    "Mos",
    "Nim",
    "Pax",
    "Ros",
    "Sev",
    "Tor",
    "Ula",
    "Wren",
    "Yar",
)
_BRAND_TAILS = ("ina", "dant", "aris", "ora", "ex", "ly", "ique", "on", "ara", "ia", "ix", "en", "ura")
MAX_BRANDS = len(_BRAND_HEADS) * len(_BRAND_TAILS)
_BLURBS = (
    "Loved by customers for everyday use.",
    "A reliable favourite at a fair price.",
    "Designed to last, easy to care for.",
    "New formula, same trusted quality.",
    "Thoughtfully made with responsibly sourced materials.",
    "Our best-rated pick this season.",
)


def make_brands(rng: np.random.Generator, n: int, per_category: int) -> list[str]:
    """About ``0.8 * n`` distinct brand names (at least ``per_category``): fewer names than slots,
    so brands overlap across categories."""
    names = sorted({h + t for h in _BRAND_HEADS for t in _BRAND_TAILS})
    pool = min(len(names), max(per_category, round(n * 0.8)))
    return [names[int(j)] for j in rng.choice(len(names), size=pool, replace=False)]


def make_item(
    rng: np.random.Generator,
    index: int,
    cat: int,
    ts: int,
    *,
    brands: Sequence[str],
    cat_brands: Sequence[np.ndarray],
    brand_premium: np.ndarray,
    description_rate: float,
    out_of_stock_rate: float,
) -> tuple[CatalogItem, int]:
    """A new item of category ``cat`` (and its brand's index); ids are ``sku-`` + 1-based index.

    ``cat_brands[cat]`` are the indices into ``brands`` that the category offers;
    ``brand_premium`` scales each brand's prices.
    """
    name, nouns, adjs, variants, median = _CATEGORIES[cat]
    brand = int(rng.choice(cat_brands[cat]))
    noun, adj = nouns[int(rng.integers(len(nouns)))], adjs[int(rng.integers(len(adjs)))]
    parts = [brands[brand], adj, noun]
    size_factor = 1.0
    if variants:
        v = int(rng.integers(len(variants)))
        parts.append(variants[v])
        size_factor = 1.0 + 0.3 * v
    price = median * size_factor * brand_premium[brand] * rng.lognormal(0.0, 0.4)
    description = None
    if rng.random() < description_rate:
        description = (
            f"{adj} {noun.lower()} by {brands[brand]}, in our {name} range. {_BLURBS[int(rng.integers(len(_BLURBS)))]}"
        )
    item = CatalogItem(
        item_id=f"sku-{index + 1:06d}",
        title=" ".join(parts),
        category=name,
        brand=brands[brand],
        price=round(max(0.5, float(price)), 2),
        in_stock=bool(rng.random() >= out_of_stock_rate),
        description=description,
        updated_ts=ts,
    )
    return item, brand
