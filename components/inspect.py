"""``fermtl data inspect``: what is in a dataset, at a glance.

Reads contract TFRecords (a file, or a folder of ``*.tfrecord`` /
``*.tfrecord.gz`` / TFX ``*tfrecord*.gz`` files, with the ``quarantine.json``
written beside them) or any raw source a reader understands, and reports:

* counts per emotion, dataset, domain, subject (top 10 + number of subjects)
  and split; how many samples carry AU labels and landmarks;
* the quarantine summary with its top reasons;
* ``contact_sheet.png``: one row per emotion class, up to 8 samples each,
  landmarks drawn when present; and ``counts.json`` with all of the above.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import random
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from components import contract, readers
from components.quarantine import Quarantine

NO_EMOTION = "(none)"  # the row / count key of samples without an emotion label
QUARANTINE_FILE = "quarantine.json"


@dataclasses.dataclass
class InspectReport:
    source: str
    kind: str                                   # "tfrecord" or a reader type
    n_samples: int
    counts: Mapping[str, Mapping[str, int]]     # contract.counts()
    with_emotion: int
    with_aus: int
    with_landmarks: int
    aus_labelled: Dict[str, int]                # AU name -> samples with that AU known
    quarantine: Quarantine
    examples: Dict[str, List[contract.FaceSample]]  # emotion name -> sheet samples

    @property
    def n_subjects(self) -> int:
        return sum(1 for s in self.counts["subject"] if s != "(unknown)")

    def to_dict(self) -> dict:
        return {
            "source": self.source, "kind": self.kind, "n_samples": self.n_samples,
            "counts": {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0])))
                       for k, v in self.counts.items()},
            "n_subjects": self.n_subjects,
            "with_emotion": self.with_emotion, "with_aus": self.with_aus,
            "with_landmarks": self.with_landmarks, "aus_labelled": self.aus_labelled,
            "quarantine": {"count": len(self.quarantine),
                           "by_reason": self.quarantine.by_reason()},
        }


# --- opening a source -----------------------------------------------------------

def tfrecord_files(path) -> List[pathlib.Path]:
    """Contract TFRecord files at ``path`` (itself, or found under it)."""
    root = pathlib.Path(path)

    def is_tfrecord(p: pathlib.Path) -> bool:
        name = p.name.lower()
        return name.endswith((".tfrecord", ".tfrecord.gz")) or (
            "tfrecord" in name and name.endswith(".gz"))

    if root.is_file():
        return [root] if is_tfrecord(root) else []
    if root.is_dir():
        return sorted(p for p in root.rglob("*") if p.is_file() and is_tfrecord(p))
    return []


def _read_tfrecords(files: Sequence[pathlib.Path]) -> Iterator[contract.FaceSample]:
    for f in files:
        gzip = f.name.lower().endswith(".gz")
        yield from contract.read_tfrecord([str(f)], compression="GZIP" if gzip else None)


def open_source(path, *, reader: Optional[str] = None, dataset: Optional[str] = None,
                progress: bool = False, **options
                ) -> Tuple[Iterator[contract.FaceSample], Quarantine, str]:
    """(samples, quarantine, kind) of a TFRecord file/folder, a raw source or a
    data spec (``.yaml``, :func:`open_data_spec`).

    ``reader`` forces a reader type (default: TFRecords if any, else
    :func:`readers.detect_reader`); ``dataset`` defaults to the folder / file
    name. For TFRecords the quarantine is the ``quarantine.json`` beside them
    (empty when there is none).
    """
    source = pathlib.Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if source.is_file() and source.suffix in (".yaml", ".yml") and not reader:
        return open_data_spec(source)
    files = [] if reader else tfrecord_files(source)
    if files:
        quarantine = Quarantine()
        report = (source if source.is_dir() else source.parent) / QUARANTINE_FILE
        if report.is_file():
            quarantine = Quarantine.read(str(report))
        return _read_tfrecords(files), quarantine, "tfrecord"
    kind = reader or readers.detect_reader(source)
    quarantine = Quarantine()
    name = dataset or (source.stem if source.is_file() else source.resolve().name)
    samples = readers.read_source(kind, str(source), name, quarantine,
                                  progress=progress, **options)
    return samples, quarantine, kind


def open_data_spec(path) -> Tuple[Iterator[contract.FaceSample], Quarantine, str]:
    """(samples, quarantine, "data spec") of every source of a data spec, read
    as FaceIngestion reads them (AU tables joined, label sets applied), before
    detection and alignment."""
    import itertools

    from components.ingestion import DataSpec
    from components.ingestion.executor import iter_source

    spec = DataSpec.load(str(path))
    quarantine = Quarantine()
    samples = itertools.chain.from_iterable(iter_source(src, quarantine) for src in spec.sources)
    return samples, quarantine, "data spec"


# --- counting ----------------------------------------------------------------

def summarize(samples: Iterable[contract.FaceSample], quarantine: Quarantine, *,
              source: str = "", kind: str = "", per_class: int = 8,
              seed: int = 0) -> InspectReport:
    """Count ``samples`` in one pass and keep up to ``per_class`` random
    examples of each emotion (reservoir sampling) for the contact sheet."""
    rng = random.Random(seed)
    seen: Dict[str, int] = {}
    examples: Dict[str, List[contract.FaceSample]] = {}
    tally = {"emotion": 0, "aus": 0, "landmarks": 0}
    aus_labelled = np.zeros(contract.NUM_AUS, np.int64)

    def observed():
        for s in samples:
            name = contract.EMOTIONS[s.emotion] if s.emotion >= 0 else NO_EMOTION
            n = seen[name] = seen.get(name, 0) + 1
            bucket = examples.setdefault(name, [])
            if len(bucket) < per_class:
                bucket.append(s)
            elif (j := rng.randrange(n)) < per_class:
                bucket[j] = s
            tally["emotion"] += s.emotion >= 0
            tally["aus"] += bool(s.aus_mask.any())
            tally["landmarks"] += s.landmarks_mask > 0
            aus_labelled[s.aus_mask > 0] += 1
            yield s

    counts = contract.counts(observed())
    return InspectReport(
        source=str(source), kind=kind, n_samples=sum(counts["dataset"].values()),
        counts=counts, with_emotion=int(tally["emotion"]), with_aus=int(tally["aus"]),
        with_landmarks=int(tally["landmarks"]),
        aus_labelled={name: int(n) for name, n in zip(contract.AU_NAMES, aus_labelled) if n},
        quarantine=quarantine, examples=examples)


def format_report(report: InspectReport, top: int = 10) -> str:
    """The report as the text ``data inspect`` prints."""
    n = max(report.n_samples, 1)
    lines = [f"source: {report.source} ({report.kind})", f"samples: {report.n_samples}"]

    def table(title: str, items: Sequence[Tuple[str, int]], note: str = ""):
        lines.append(f"{title}:{note}")
        width = max((len(k) for k, _ in items), default=0)
        for key, count in items:
            lines.append(f"  {key:<{width}}  {count:>7}  {100.0 * count / n:5.1f}%")

    emotions = report.counts["emotion"]
    order = [e for e in contract.EMOTIONS + (NO_EMOTION,) if e in emotions]
    table("emotion", [(e, emotions[e]) for e in order])
    for group in ("dataset", "domain", "split"):
        table(group, sorted(report.counts[group].items(), key=lambda kv: (-kv[1], kv[0])))
    subjects = sorted(report.counts["subject"].items(), key=lambda kv: (-kv[1], kv[0]))
    table("subject", subjects[:top],
          f" {report.n_subjects} subjects" + (f", top {top}" if len(subjects) > top else ""))
    lines.append(f"labels: emotion {report.with_emotion}, AUs {report.with_aus}, "
                 f"landmarks {report.with_landmarks}")
    if report.aus_labelled:
        lines.append("  AUs known: " + ", ".join(f"{k} {v}" for k, v in
                                                 report.aus_labelled.items()))
    lines.append(report.quarantine.summary())
    by_reason = sorted(report.quarantine.by_reason().items(), key=lambda kv: (-kv[1], kv[0]))
    for reason, count in by_reason[:5]:
        example = next(e for e in report.quarantine.entries if e.reason == reason)
        lines.append(f"  {reason:<22} {count:>6}  e.g. {example.source}"
                     + (f": {example.detail}" if example.detail else ""))
    return "\n".join(lines)


# --- contact sheet -----------------------------------------------------------

def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, font, width: int, draw) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[1:]
    return "…" + text


def contact_sheet(examples: Mapping[str, Sequence[contract.FaceSample]],
                  class_counts: Mapping[str, int], path, *, title: str = "",
                  per_class: int = 8, tile: int = 96) -> pathlib.Path:
    """Write a PNG grid: one row per emotion class (in :data:`contract.EMOTIONS`
    order, then unlabelled samples), up to ``per_class`` faces each, captioned
    with subject (or split); landmarks drawn as dots."""
    from PIL import Image, ImageDraw

    rows = [e for e in contract.EMOTIONS + (NO_EMOTION,) if examples.get(e)]
    label_w, caption_h, pad, title_h = 130, 16, 6, 30
    cell_w, cell_h = tile + pad, tile + caption_h + pad
    width = label_w + per_class * cell_w + pad
    height = title_h + max(len(rows), 1) * cell_h + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(15), _font(11)
    draw.text((pad, 7), _fit(title, big, width - 2 * pad, draw), fill="black", font=big)
    if not rows:
        draw.text((pad, title_h), "(no samples)", fill="gray", font=big)

    for r, name in enumerate(rows):
        y = title_h + r * cell_h
        draw.text((pad, y + tile // 2 - 18), name, fill="black", font=big)
        draw.text((pad, y + tile // 2 + 2), f"n={class_counts.get(name, 0)}",
                  fill="dimgray", font=small)
        for c, sample in enumerate(examples[name][:per_class]):
            x = label_w + c * cell_w
            face = Image.fromarray(sample.pixels())
            scale = tile / max(face.size)
            shown = face.resize((max(1, round(face.width * scale)),
                                 max(1, round(face.height * scale))), Image.BILINEAR)
            ox, oy = x + (tile - shown.width) // 2, y + (tile - shown.height) // 2
            sheet.paste(shown.convert("RGB"), (ox, oy))
            draw.rectangle((x - 1, y - 1, x + tile, y + tile), outline="lightgray")
            if sample.landmarks_mask > 0:
                for lx, ly in sample.landmarks:
                    px, py = ox + lx * shown.width, oy + ly * shown.height
                    draw.ellipse((px - 1.2, py - 1.2, px + 1.2, py + 1.2), fill=(0, 220, 60))
            caption = sample.subject or sample.uid.rsplit("/", 1)[-1]
            draw.text((x, y + tile + 2), _fit(caption, small, tile, draw), fill="dimgray",
                      font=small)

    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


# --- all of it ---------------------------------------------------------------

def inspect(path, *, reader: Optional[str] = None, dataset: Optional[str] = None,
            out_dir="inspect_out", per_class: int = 8, progress: bool = False,
            **options) -> InspectReport:
    """Count a source, write ``out_dir/contact_sheet.png`` and ``out_dir/counts.json``.

    Raises:
      readers.EmptySourceError: a raw source with no usable input.
      ValueError: a raw source whose format cannot be detected (pass ``reader``).
    """
    samples, quarantine, kind = open_source(path, reader=reader, dataset=dataset,
                                            progress=progress, **options)
    report = summarize(samples, quarantine, source=str(path), kind=kind, per_class=per_class)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contact_sheet(report.examples, report.counts["emotion"], out / "contact_sheet.png",
                  title=f"{path} ({kind}): {report.n_samples} samples", per_class=per_class)
    with open(out / "counts.json", "w") as f:
        json.dump(report.to_dict(), f, indent=2)
    return report
