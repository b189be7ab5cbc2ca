"""The options every settings-driven benchmark shares: a profile, the params file, -S overrides."""

from __future__ import annotations

import argparse


def settings_parser(doc: str | None, default_profile: str = "full") -> argparse.ArgumentParser:
    """A benchmark's argument parser with --profile, --params and -S KEY.PATH=VALUE (as `reid-prune run`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=default_profile, choices=["quick", "default", "full"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY.PATH=VALUE")
    return parser
