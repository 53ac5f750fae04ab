"""A small synthetic plant catalogue that looks like the plan's problem, for
`make run`, tests and benchmarks: a few dozen "species" whose photos differ
visibly (colour, pattern, shape), a long tail (classes with 1 and 2 images),
several regions, mixed licences (some not permissive), duplicate images,
images under 100 px, malformed records and broken URLs.

    python -m shared.data.sample_data --output data/sample [--species 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from shared.io.atomic import write_bytes
from shared.io.records import write_jsonl

REGIONS = ("EU_SW", "EU_NORTH", "EU_EAST", "OTHER")
PERMISSIVE = ("CC0", "cc-by-4.0", "CC BY-SA 4.0", "cc0-1.0", "CC-BY", "cc-by-sa")
RESTRICTED = ("cc-by-nc-4.0", "All rights reserved", "CC-BY-ND")


def species_name(k: int) -> str:
    genera = (
        "Quercus",
        "Pinus",
        "Rosa",
        "Salvia",
        "Thymus",
        "Lavandula",
        "Cistus",
        "Erica",
        "Olea",
        "Acer",
        "Betula",
        "Fagus",
        "Iris",
        "Orchis",
        "Ophrys",
        "Allium",
    )
    return f"{genera[k % len(genera)]} sp{k:03d}"


def render_species_image(
    k: int, rng: np.random.Generator, size: tuple[int, int] = (256, 208), off_centre: bool = False
) -> Image.Image:
    """One photo of species k: a patterned coloured subject on a noisy background.

    The species is identified by hue, pattern (stripes/dots/checks/rings), pattern
    frequency and subject shape; pose, position, scale and noise vary per photo."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([np.full((h, w), 60.0), np.full((h, w), 90.0), np.full((h, w), 50.0)], -1)
    bg += rng.normal(0, 18, (h, w, 3))
    hue = (k * 0.61803398875) % 1.0
    col = np.array(colorsys.hsv_to_rgb(hue, 0.55 + 0.4 * ((k // 7) % 2), 0.95)) * 255
    col2 = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.6)) * 255
    radius = min(w, h) * rng.uniform(0.22, 0.32)
    if off_centre:
        cx = rng.choice([radius + 4, w - radius - 4]) + rng.normal(0, 3)
        cy = rng.choice([radius + 4, h - radius - 4]) + rng.normal(0, 3)
    else:
        cx, cy = w / 2 + rng.normal(0, w * 0.08), h / 2 + rng.normal(0, h * 0.08)
    ang = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    elong = 1.0 + 0.8 * (k % 3)  # round, oval, leaf-like
    mask = (u / radius) ** 2 + (v * elong / radius) ** 2 <= 1.0
    freq = (2 + k % 5) * np.pi / radius
    pattern = (k // 5) % 4
    if pattern == 0:
        p = np.sin(u * freq) > 0
    elif pattern == 1:
        p = (np.sin(u * freq) * np.sin(v * freq)) > 0.3
    elif pattern == 2:
        p = (np.sign(np.sin(u * freq)) * np.sign(np.sin(v * freq))) > 0
    else:
        p = np.sin(np.sqrt(u**2 + v**2) * freq) > 0
    subject = np.where(p[..., None], col, col2) + rng.normal(0, 10, (h, w, 3))
    img = np.where(mask[..., None], subject, bg)
    img *= rng.uniform(0.8, 1.15)  # exposure
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def class_sizes(n_species: int, rng: np.random.Generator) -> list[int]:
    """Long-tailed images per class: most classes 8-30 images, a tail of 1s and 2s."""
    sizes = []
    for k in range(n_species):
        if k >= n_species - max(2, n_species // 10):
            sizes.append(1 if k % 2 else 2)
        else:
            sizes.append(int(np.clip(30 * (0.93**k) + rng.integers(0, 4), 8, 30)))
    return sizes


def generate(output: str | Path, n_species: int = 40, seed: int = 0, image_size: tuple[int, int] = (256, 208)) -> dict:
    """Write images under output/images and output/records.jsonl; return a summary.

    Long: the synthetic catalogue record by record, with the bad records the tests rely on, in one sequence.
    """
    out = Path(output).resolve()
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n_species, rng)
    records: list[dict] = []
    n = 0
    for k, count in enumerate(sizes):
        home = REGIONS[k % len(REGIONS)]
        for j in range(count):
            n += 1
            # Most photos from the species' home region, some elsewhere.
            region = home if rng.random() < 0.8 else REGIONS[int(rng.integers(0, len(REGIONS)))]
            lic = (
                RESTRICTED[int(rng.integers(0, len(RESTRICTED)))]
                if rng.random() < 0.08
                else PERMISSIVE[int(rng.integers(0, len(PERMISSIVE)))]
            )
            path = img_dir / f"img{n:05d}.jpg"
            img = render_species_image(k, rng, image_size, off_centre=(j % 4 == 3))
            write_bytes(path, _jpeg(img))
            records.append(
                {
                    "image_id": f"img{n:05d}",
                    "image_url": str(path),
                    "taxon": species_name(k),
                    "region": region,
                    "license": lic,
                    "observation_id": f"obs{n:05d}",
                    "source": "synthetic",
                    "width": img.width,
                    "height": img.height,
                }
            )
    base = len(records)
    # Two photos of one observation (must stay in one split).
    records[5]["observation_id"] = records[4]["observation_id"]
    # Content duplicates: same bytes under another id and URL.
    for i in range(3):
        src = records[i * 7]
        dup = img_dir / f"dup{i}.jpg"
        dup.write_bytes(Path(src["image_url"]).read_bytes())
        records.append({**src, "image_id": f"dup{i}", "image_url": str(dup), "observation_id": f"dupobs{i}"})
    # Exact duplicate records (same URL).
    records.append({**records[10], "image_id": "img_dup_url"})
    # Images under 100 px on the short side (size not declared, so the cache catches them).
    for i in range(3):
        tiny = img_dir / f"tiny{i}.jpg"
        write_bytes(tiny, _jpeg(render_species_image(i, rng, (120, 64))))
        records.append(
            {
                "image_id": f"tiny{i}",
                "image_url": str(tiny),
                "taxon": species_name(i),
                "region": "EU_SW",
                "license": "CC0",
            }
        )
    # Broken URLs (about 1.5%: under the plan's 5% failure budget).
    for i in range(max(1, base // 70)):
        records.append(
            {
                "image_id": f"broken{i}",
                "image_url": str(img_dir / f"missing{i}.jpg"),
                "taxon": species_name(i),
                "region": "EU_NORTH",
                "license": "CC-BY",
            }
        )
    # Malformed records.
    records.append(
        {"image_id": "bad_no_taxon", "image_url": str(img_dir / "img00001.jpg"), "region": "EU_SW", "license": "CC0"}
    )
    records.append(
        {
            "image_id": "bad_width",
            "image_url": str(img_dir / "img00002.jpg"),
            "taxon": species_name(0),
            "region": "EU_SW",
            "license": "CC0",
            "width": "wide",
        }
    )
    write_jsonl(out / "records.jsonl", records)
    summary = {
        "records": len(records),
        "species": n_species,
        "images_written": n + 6,
        "records_path": str(out / "records.jsonl"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="data/sample")
    ap.add_argument("--species", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(generate(args.output, args.species, args.seed), indent=2))


if __name__ == "__main__":
    main()
