"""``fermtl data``: make, import and inspect datasets.

    fermtl data synth   --out DIR --subjects N [--samples-per-emotion K] [--size PX]
                        [--seed S] [--domains lab,wild]
    fermtl data inspect PATH [--reader TYPE] [--dataset NAME] [--out DIR]
    fermtl data import  --reader TYPE PATH --dataset NAME --out DIR [--au-table CSV]
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys

# Reader type names, listed here so that `--help` needs no heavy import.
READER_TYPES = ("class_folders", "fer2013_csv", "jaffe", "pts_landmarks")
AU_KEYS = ("stem", "path", "uid")


def register(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="make, import and inspect datasets",
        description="Make a synthetic dataset, import a raw dataset into contract "
                    "TFRecords, or inspect what a dataset holds.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    synth = sub.add_parser(
        "synth", help="write a synthetic multi-task face dataset",
        description="Render synthetic faces with emotion, AU and landmark labels.")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--subjects", type=int, required=True, metavar="N",
                       help="number of synthetic subjects")
    synth.add_argument("--samples-per-emotion", type=int, metavar="K",
                       help="samples per subject and emotion")
    synth.add_argument("--size", type=int, metavar="PX", help="image side in pixels")
    synth.add_argument("--seed", type=int, metavar="S", help="random seed")
    synth.add_argument("--domains", metavar="LIST",
                       help="comma-separated capture domains, e.g. lab,wild")
    synth.set_defaults(func=run_synth)

    insp = sub.add_parser(
        "inspect", help="counts, quarantine and a contact sheet of a dataset",
        description="Count a contract TFRecord file/folder or a raw source by emotion, "
                    "dataset, domain, subject and split; print the quarantine summary; "
                    "write contact_sheet.png and counts.json.")
    insp.add_argument("path", metavar="PATH",
                      help="TFRecord file, folder of TFRecords, raw dataset source, or a data "
                           "spec (.yaml: its sources as FaceIngestion reads them)")
    insp.add_argument("--reader", choices=READER_TYPES,
                      help="raw source type (default: detected)")
    insp.add_argument("--dataset", help="dataset name of a raw source (default: its name)")
    insp.add_argument("--out", default="inspect_out",
                      help="folder for contact_sheet.png and counts.json (default: %(default)s)")
    insp.add_argument("--per-class", type=int, default=8,
                      help="samples per emotion on the contact sheet (default: %(default)s)")
    insp.set_defaults(func=run_inspect)

    imp = sub.add_parser(
        "import", help="convert a raw dataset into a contract TFRecord",
        description="Read a raw dataset with one reader and write DIR/NAME.tfrecord "
                    "and DIR/quarantine.json (every rejected input with its reason).")
    imp.add_argument("path", metavar="PATH", help="raw dataset file or folder")
    imp.add_argument("--reader", choices=READER_TYPES, required=True, help="source type")
    imp.add_argument("--dataset", required=True, metavar="NAME", help="dataset name")
    imp.add_argument("--out", required=True, metavar="DIR", help="output folder")
    imp.add_argument("--domain", default="", help="capture domain (default: the dataset name)")
    imp.add_argument("--au-table", metavar="CSV", help="AU label table to join by id")
    imp.add_argument("--au-key", choices=AU_KEYS, default="stem",
                     help="sample id the AU table's ids match (default: %(default)s)")
    imp.add_argument("--au-id-column", help="id column of the AU table (default: the first)")
    imp.set_defaults(func=run_import)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_synth(args: argparse.Namespace) -> int:
    from components import synthetic  # lazy: renders with numpy/PIL only when asked

    kwargs = {"n_subjects": args.subjects, "progress": True}
    optional = {"samples_per_emotion": args.samples_per_emotion, "size": args.size,
                "seed": args.seed}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if args.domains:
        kwargs["domains"] = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    manifest = synthetic.write_dataset(args.out, **kwargs) or {}
    target = os.path.join(args.out, manifest.get("file", ""))
    print(f"wrote {manifest.get('num_samples', '?')} samples to {target} "
          f"({manifest.get('seconds', '?')} s)")
    counts = manifest.get("counts", {})
    for group in ("emotion", "domain"):
        if counts.get(group):
            print(f"  {group}: " + ", ".join(f"{k} {v}" for k, v in counts[group].items()))
    if counts.get("subject"):
        print(f"  subjects: {len(counts['subject'])}")
    print(f"manifest: {os.path.join(args.out, 'manifest.json')}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from components import inspect, readers
    from pipeline.console import quiet_run

    log_path = os.path.join(args.out, "inspect.log")   # Beam's and absl's INFO lines
    try:
        with quiet_run(log_path):
            report = inspect.inspect(args.path, reader=args.reader, dataset=args.dataset,
                                     out_dir=args.out, per_class=args.per_class,
                                     progress=sys.stderr.isatty())
    except (readers.EmptySourceError, ValueError, FileNotFoundError) as err:
        return _fail(str(err))
    print(inspect.format_report(report))
    print(f"log: {log_path}")
    print(f"contact sheet: {os.path.join(args.out, 'contact_sheet.png')}")
    print(f"counts: {os.path.join(args.out, 'counts.json')}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from components import contract, readers
    from components.quarantine import Quarantine

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{args.dataset}.tfrecord"
    partial = target.with_name(target.name + ".partial")
    report = out / "quarantine.json"
    quarantine = Quarantine()
    emotions, splits = collections.Counter(), collections.Counter()
    n_aus = n_landmarks = 0

    def counted(samples):
        nonlocal n_aus, n_landmarks
        for s in samples:
            emotions[contract.EMOTIONS[s.emotion] if s.emotion >= 0 else "(none)"] += 1
            splits[s.split or "(none)"] += 1
            n_aus += bool(s.aus_mask.any())
            n_landmarks += s.landmarks_mask > 0
            yield s

    try:
        samples = readers.read_source(
            args.reader, args.path, args.dataset, quarantine, domain=args.domain,
            progress=sys.stderr.isatty(), au_table=args.au_table, au_key=args.au_key,
            au_id_column=args.au_id_column)
        n = contract.write_tfrecord(counted(samples), str(partial))
    except (readers.EmptySourceError, ValueError, FileNotFoundError) as err:
        partial.unlink(missing_ok=True)
        quarantine.write(str(report))
        print(quarantine.summary())
        return _fail(str(err))
    partial.replace(target)
    quarantine.write(str(report))

    print(f"wrote {n} samples to {target}")
    order = [e for e in contract.EMOTIONS + ("(none)",) if e in emotions]
    print("  emotion: " + ", ".join(f"{e} {emotions[e]}" for e in order))
    print("  split:   " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    print(f"  with AUs: {n_aus}, with landmarks: {int(n_landmarks)}")
    print(quarantine.summary())
    print(f"quarantine report: {report}")
    return 0
