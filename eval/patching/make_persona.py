#!/usr/bin/env python3
"""A persona patching task in the spirit of Poonia & Jain (2025, arXiv
2507.20936): an objective question asked under persona prompts that differ in
one identity phrase of equal token length.

    python3 eval/patching/make_persona.py   # writes eval/patching/persona_{train,test}.jsonl

The persona states the speaker's country; the question asks for the capital
of "my country", so the answer depends only on the identity phrase:

    clean:     "I am a proud citizen of France. Question: What is the capital of my country? Answer:"
    corrupted: the same with Japan;   answer " Paris", wrong " Tokyo"

Countries and capitals are single tokens of SmolLM2 (`saescope patch` checks
that clean and corrupted have equal token length and that the answers are
single tokens). Fixed seed 2507; 40 test pairs and 40 train pairs, disjoint in
(clean, corrupted) country pairs.
"""
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
    "Germany": "Berlin", "Egypt": "Cairo", "Russia": "Moscow", "Greece": "Athens",
    "England": "London", "China": "Beijing", "Canada": "Ottawa", "Kenya": "Nairobi",
    "Peru": "Lima", "Cuba": "Havana", "Norway": "Oslo", "Poland": "Warsaw",
    "Ireland": "Dublin", "Austria": "Vienna", "Portugal": "Lisbon", "Sweden": "Stockholm",
}
TEMPLATE = "I am a proud citizen of {}. Question: What is the capital of my country? Answer:"


def main() -> None:
    rng = random.Random(2507)
    countries = sorted(CAPITALS)
    pairs = [(a, b) for a in countries for b in countries if a != b]
    rng.shuffle(pairs)
    for name, chosen in [("test", pairs[:40]), ("train", pairs[40:80])]:
        lines = [
            {
                "clean": TEMPLATE.format(a),
                "corrupted": TEMPLATE.format(b),
                "answer": " " + CAPITALS[a],
                "wrong": " " + CAPITALS[b],
            }
            for a, b in chosen
        ]
        path = HERE / f"persona_{name}.jsonl"
        path.write_text("".join(json.dumps(l) + "\n" for l in lines))
        print(f"wrote {len(lines)} pairs to {path}")


if __name__ == "__main__":
    main()
