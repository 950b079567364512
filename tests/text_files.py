"""Small labelled text datasets that tests write themselves: headlines of four topics, each named by its words."""

from __future__ import annotations

import csv
import random
from pathlib import Path

TOPICS = {
    "business": "stocks shares market profit bank merger",
    "sports": "team match goal coach league final",
    "tech": "chip software robot code cloud laptop",
    "world": "election minister border treaty summit embassy",
}


def headline(rng: random.Random, topic: str) -> str:
    return " ".join(rng.sample(TOPICS[topic].split(), 3) + ["today"])


def write_csv(path: Path, rows: list, header: tuple[str, ...] = ("text", "label")) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def news_csv(folder: Path, train_per_topic: int = 24, dev_per_topic: int = 4, seed: int = 0) -> tuple[str, str]:
    """``train.csv`` and ``dev.csv`` (columns ``text``, ``label``) in ``folder``."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    train = write_csv(folder / "train.csv", [(headline(rng, t), t) for t in topics * train_per_topic])
    dev = write_csv(folder / "dev.csv", [(headline(rng, t), t) for t in topics * dev_per_topic])
    return train, dev
