"""The ``elr`` command: build the book, run a chapter, prove the paper's statements."""
from __future__ import annotations

import argparse
import sys

from elr import book


def _cmd_book(args) -> int:
    names = [book.find_chapter(c) for c in args.only] if args.only else book.chapters()
    book.run_chapters(names, args.profile)
    if not args.no_html:
        index = book.build_html()
        print(f"elr: book built: {index}")
    return 0


def _cmd_run(args) -> int:
    name = book.find_chapter(args.chapter)
    overrides = book.parse_overrides(args.p or [])
    book.run_chapters([name], args.profile, overrides)
    return 0


def _cmd_params(args) -> int:
    name = book.find_chapter(args.chapter)
    profiles = book.load_profiles().get(name, {})
    print(f"{name}: parameters (default = quick profile)")
    for p in book.read_parameters(name).values():
        extra = "".join(f"  {prof}={profiles[prof][p.name]!r}" for prof in book.PROFILES if p.name in profiles.get(prof, {}))
        rules = f"  [{', '.join(p.constraints)}]" if p.constraints else ""
        print(f"  {p.name}: {p.type} = {p.default!r}{rules}  # {p.help}{extra}")
    return 0


def _cmd_prove(args) -> int:
    from elr import symbolic

    results = symbolic.prove_all()
    for r in results:
        print(r.line())
    failed = [r.ref for r in results if not r.ok]
    print(f"elr prove: {len(results) - len(failed)} of {len(results)} statements verified"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="elr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("book", help="execute the chapters with papermill and build the HTML book")
    p.add_argument("--profile", default="quick", choices=book.PROFILES)
    p.add_argument("--only", nargs="+", metavar="CHAPTER", help="execute only these chapters (others are reused)")
    p.add_argument("--no-html", action="store_true", help="execute chapters but skip jupyter-book")
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser("run", help="execute one chapter into book/chapters/")
    p.add_argument("chapter", help="e.g. 05, 05_large_learning_rates or large_learning_rates")
    p.add_argument("--profile", default="quick", choices=book.PROFILES)
    p.add_argument("-p", action="append", metavar="NAME=VALUE", help="override one parameter (repeatable)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("params", help="list a chapter's parameters, types, constraints and profiles")
    p.add_argument("chapter")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("prove", help="check every statement of the paper symbolically and numerically")
    p.set_defaults(func=_cmd_prove)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except book.ParameterError as err:
        print(f"elr: error: {err}", file=sys.stderr)
        return 2
    except (book.ChapterFailed, RuntimeError, FileNotFoundError) as err:
        print(f"elr: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
