"""Fixed tokenized/raw hypothesis and reference texts, and a fake prepared dataset + run directory for eval tests."""

from __future__ import annotations

import struct
from pathlib import Path


# Moses-tokenized (escaped, aggressive hyphen splitting), BPE removed: what fairseq-generate --remove-bpe prints.
HYPS_TOK = [
    "Das ist ein kleiner Test .",
    "Die Katze sitzt auf der Matte und schläft .",
    "Er sagte , &quot; das ist gut &quot; und ging nach Hause .",
    "Die Sitzung wurde um 10 Uhr eröffnet .",
    "Wir haben 3,5 Millionen Euro für die Forschung @-@ Projekte ausgegeben .",
    "Ich weiß nicht , ob es morgen regnen wird .",
    "Das Wetter ist heute schön &amp; warm .",
    "Die Kinder spielen im Garten mit dem Ball .",
]
REFS_TOK = [
    "Das ist ein kleiner Test .",
    "Die Katze sitzt auf der Matte .",
    "Er sagte : &quot; das ist sehr gut &quot; und ging heim .",
    "Die Sitzung wurde um 10 Uhr morgens eröffnet .",
    "Wir haben 3,5 Millionen Euro für Forschung @-@ Projekte ausgegeben .",
    "Ich weiß nicht , ob es morgen regnet .",
    "Das Wetter ist heute schön &amp; warm .",
    "Die Kinder spielen mit dem Ball im Garten .",
]
REFS_RAW = [
    "Das ist ein kleiner Test.",
    "Die Katze sitzt auf der Matte.",
    'Er sagte: "das ist sehr gut" und ging heim.',
    "Die Sitzung wurde um 10 Uhr morgens eröffnet.",
    "Wir haben 3,5 Millionen Euro für Forschung-Projekte ausgegeben.",
    "Ich weiß nicht, ob es morgen regnet.",
    "Das Wetter ist heute schön & warm.",
    "Die Kinder spielen mit dem Ball im Garten.",
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


def write_idx(path: Path, n: int) -> Path:
    """A fairseq mmap index header for n sentences (what idx_length reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 4) + struct.pack("<Q", n)
                     + struct.pack("<Q", n + 1) + b"\x00" * (4 * n))
    return path


def generate_output(hyps: list[str], order: list[int]) -> str:
    """What fairseq-generate prints (log lines, S/T/H/D/P lines), sentences in the given id order."""
    out = ["2024-01-01 00:00:00 | INFO | fairseq_cli.generate | loading model(s)"]
    for i in order:
        out += [f"S-{i}\tsource {i}", f"T-{i}\t{REFS_TOK[i]}", f"H-{i}\t-0.{i + 1}\t{hyps[i]}",
                f"D-{i}\t-0.{i + 1}\t{hyps[i]}", f"P-{i}\t-0.1 -0.2"]
    out.append("Generate test with beam=4: BLEU4 = 50.00, 70/55/45/40 (BP=1.000, ratio=1.000, syslen=60, reflen=60)")
    return "\n".join(out) + "\n"
