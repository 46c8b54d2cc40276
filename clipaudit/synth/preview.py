"""A contact sheet: a few images per domain from a collection, one row per domain,
to look at the styles."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipaudit.shards import iter_store_samples
from clipaudit.synth.collection import Collection


def contact_sheet(location, out_png: str | Path, per_domain: int = 10, scale: int = 3,
                  splits: list[str] | None = None) -> Path:
    """Write a PNG with ``per_domain`` images of each domain (true domain, from the
    test sets first, then train), labelled with domain and class. Returns its path."""
    coll = location if isinstance(location, Collection) else Collection.load(location)
    splits = splits or [*coll.test_splits, "train"]
    picked: dict[str, list[tuple[np.ndarray, str]]] = {d: [] for d in coll.domains}
    seen_cls: dict[str, set[str]] = {d: set() for d in coll.domains}
    for split in splits:
        if all(len(v) >= per_domain for v in picked.values()):
            break
        for s in iter_store_samples(coll.store, coll.shard_keys(split)):
            meta = s["json"]
            d = meta["domain"]
            # prefer one image per class before repeating classes
            if len(picked[d]) >= per_domain or (meta["class"] in seen_cls[d] and len(seen_cls[d]) < len(coll.classes)):
                continue
            seen_cls[d].add(meta["class"])
            picked[d].append((np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")), meta["class"]))
            if all(len(v) >= per_domain for v in picked.values()):
                break
    S = coll.image_size * scale
    label_w, pad, text_h = 80, 4, 12
    W = label_w + per_domain * (S + pad)
    H = len(coll.domains) * (S + text_h + pad) + pad
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, d in enumerate(coll.domains):
        y = pad + row * (S + text_h + pad)
        draw.text((4, y + S // 2 - 6), d, fill=(0, 0, 0))
        for col, (img, cls) in enumerate(picked[d]):
            x = label_w + col * (S + pad)
            sheet.paste(Image.fromarray(img).resize((S, S), Image.NEAREST), (x, y))
            draw.text((x, y + S), cls, fill=(60, 60, 60))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
