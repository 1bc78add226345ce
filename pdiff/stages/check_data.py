"""`pdiff check-data`: check that the configured datasets are on disk (rule check_data)."""

from __future__ import annotations

import argparse

from pdiff.stages.common import add_data_root, json_value

NAME = "check-data"
HELP = "check that the configured datasets are on disk"
TORCH_FREE = True  # reads splits and JSON only: --threads does not load torch (1.5 s a job)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_root(p)
    p.add_argument("--datasets", type=json_value, required=True,
                   help='JSON list of entries/CoOp names, or the config catalogue {name: entry}, '
                        'e.g. \'["OxfordPets", {"name": "mine", "folder": "mine", '
                        '"split_file": "split.json"}]\'')
    p.add_argument("--out", help="also write the report as JSON (written atomically)")
    p.add_argument("--sample", type=int, default=10, help="missing images listed per dataset")


def run(args: argparse.Namespace) -> None:
    from pdiff.check_data import assert_ok, check_data, format_report
    from pdiff.utils import write_json

    report = check_data(data_root=args.data_root, datasets=args.datasets, sample=args.sample)
    print(format_report(report))
    if args.out:
        write_json(args.out, report)
    assert_ok(report)  # after the report is written: a failed check still leaves its details
