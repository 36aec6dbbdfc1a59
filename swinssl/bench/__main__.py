"""``python -m swinssl.bench <name> [options]``: the subcommands of :data:`swinssl.bench.BENCHMARKS`."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from swinssl.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m swinssl.bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # Only the chosen benchmark is imported: some need optional packages the others do not.
    name = next((arg for arg in argv if arg in BENCHMARKS), None)
    for key, summary in BENCHMARKS.items():
        sub = commands.add_parser(key, help=summary)
        if key == name:
            module = importlib.import_module(f"swinssl.bench.{key}")
            sub.description = module.__doc__
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(sub)
    args = parser.parse_args(argv)
    importlib.import_module(f"swinssl.bench.{args.command}").run(args, "python -m swinssl.bench " + shlex.join(argv))


if __name__ == "__main__":
    from swinssl.pipes import quiet_broken_pipe

    with quiet_broken_pipe():
        main()
