"""The ``elr`` command: build the book, run a chapter, prove the paper's statements."""
from __future__ import annotations

import argparse
import json
import sys

from elr import book


def _fresh(args) -> None:
    import os

    if getattr(args, "fresh", False):
        os.environ["ELR_FRESH"] = "1"  # read by elr.train.run inside the chapters' kernels


def _cmd_book(args) -> int:
    _fresh(args)
    names = [book.find_chapter(c) for c in args.only] if args.only else book.chapters()
    overrides = book.parse_overrides(args.p or []) or None
    failed = None
    try:
        book.run_chapters(names, args.profile, overrides, timeout=args.timeout, where_declared=True)
    except book.ChapterFailed as err:
        failed = err  # a reader still gets a book: every chapter ran, the failed ones carry a banner
    if not args.no_html:
        from elr import pages, scoreboard

        print(f"elr: scoreboard of the paper written: {scoreboard.write()}")
        index = book.build_html(strict=failed is None)  # a chapter that stopped early leaves glue undefined
        print(f"elr: book built: {index}" + (" (with failed chapters, each marked by a banner)" if failed else ""))
        problems = pages.check_html(index.parent)
        if problems:
            print("elr: the built pages show what a reader should not see (tracebacks, warnings, paths of this "
                  "machine):\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
    if failed:
        print(f"elr: {failed}", file=sys.stderr)
        return 1
    return 0


def _cmd_robust(args) -> int:
    names = [book.find_chapter(c) for c in args.only] if args.only else None
    book.robust(args.variants or None, args.profile, timeout=args.timeout, names=names)
    print(f"elr: every robustness build passed; recorded in {book.ROBUST_MD}")
    return 0


def _cmd_run(args) -> int:
    _fresh(args)
    name = book.find_chapter(args.chapter)
    overrides = book.parse_overrides(args.p or [])
    book.run_chapters([name], args.profile, overrides, timeout=args.timeout)
    return 0


def _cmd_claims(args) -> int:
    from elr import claims

    dirs = args.dirs or [str(book.CHAPTERS_OUT / "claims")]
    print(claims.calibrate(dirs))
    if args.propose:
        proposal = claims.propose_roles(dirs[0])
        print(f"\nroles the gate rule allows from the pilot in {dirs[0]}:")
        for claim_id, p in proposal.items():
            print(f"  {claim_id:40s} {'gate' if p['gate'] else 'report':6s} {p['why']}")
        gates = [p["p_flip"] for p in proposal.values() if p["gate"]]
        print(f"  {len(gates)} gate claims, sum of P(flip) {100 * sum(gates):.2f} %")
        if len(dirs) > 1:
            candidates = [k for k, p in proposal.items() if p["gate"]]
            done = claims.confirm(candidates, dirs[1:])
            print(f"\nconfirmations of the candidates in {', '.join(dirs[1:])} (decided as gates):")
            for claim_id, c in done.items():
                missed = "; ".join(f"seed {s}: {v}" for s, v in c["missed"])
                print(f"  {claim_id:40s} {'gate' if c['gate'] else 'report':6s} held at {sorted(c['held'])}"
                      + (f"; missed at {missed}" if missed else "") + (f"; not in {c['missing']}" if c["missing"] else ""))
            confirmed = [proposal[k]["p_flip"] for k, c in done.items() if c["gate"]]
            print(f"  {len(confirmed)} confirmed gate claims, sum of P(flip) {100 * sum(confirmed):.2f} %")
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


def _example_input(name: str, batch: int = 4):
    import torch

    from elr import nets

    if name.startswith(("bnrelu", "resmlp")):
        return torch.randn(max(batch, 8), 64, generator=torch.Generator().manual_seed(0))
    size = 64 if name == "resnet101" else 32
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _cmd_audit(args) -> int:
    from elr import audit, nets, train

    if args.model == "resnet-v2-block":  # the paper's Section 3.1 example of a broken placement
        model, inputs = audit.section_3_1_modules("batch")["residual connection (ResNet v2)"], _example_input("bnrelu")[:, :8]
    else:
        # TrainConfig refuses a shortcut flag that an MLP's name contradicts, as elr train does
        config = train.TrainConfig(model=args.model, shortcut=False if args.no_shortcut else None)
        kwargs = {} if args.model.startswith(("bnrelu", "resmlp")) else {"shortcut": config.has_shortcuts}
        model, inputs = nets.build(args.model, bn_affine=args.bn_affine, **kwargs), _example_input(args.model)
    rows = audit.audit(model, inputs)
    if args.json:
        print(json.dumps([{**r.__dict__, "verdict": r.verdict} for r in rows], indent=2))
    else:
        print(audit.format_table(rows))
        n = sum(r.invariant for r in rows)
        print(f"\n{n} of {len(rows)} parameters auto-tune (output unchanged, in float64 with BN eps 1e-12, "
              f"when the parameter is scaled by 0.5 or 3)")
    return 0


def _cmd_measure(args) -> int:
    import tempfile

    import numpy as np

    from elr import dynamics, train

    cfg = train.TrainConfig(model=args.model, shortcut=False if args.no_shortcut else None, steps=max(args.steps, 1),
                            lr=args.lr if args.steps else 1e-12, batch_size=args.batch_size, dataset=args.dataset,
                            data_root=args.data_root, transform="random_walk" if args.random_walk else "none",
                            log_every=max(args.steps, 1), seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if args.steps == 0:
            result = _measure_at_init(cfg)
        else:
            result = train.train(cfg, tmp).records
    steps, elr_max = result.matrix("elr_grad_max")
    e = elr_max[-1]
    out = {"model": args.model, "shortcut": cfg.has_shortcuts, "dataset": args.dataset, "step": int(steps[-1]),
           "after_steps": args.steps, "lr": args.lr if args.steps else None, "random_walk": args.random_walk,
           "layers": result.layer_names, "elr": [float(v) for v in e],
           "s_rel": float(dynamics.relative_spread(e)),
           "critical_lr": float(dynamics.critical_lr(e)), "subcritical_lr": float(dynamics.subcritical_lr(e))}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, v in zip(out["layers"], out["elr"]):
            print(f"{name:<28} {v:.4e}")
        print(f"S_rel = {out['s_rel']:.4f}; κ_ℓh = {out['critical_lr']:.3e}; κ_hh' = {out['subcritical_lr']:.3e} "
              f"({'after %d steps' % args.steps if args.steps else 'at initialisation'}, {args.dataset})")
    return 0


def _measure_at_init(cfg):
    import torch

    from elr import data, measure, train

    ds = data.load(cfg.dataset, True, cfg.data_root)
    torch.manual_seed(cfg.seed)
    model = train.build_model(cfg, ds.shape[0], ds.num_classes, int(torch.tensor(ds.shape).prod()))
    return measure.measure_once(model, ds.inputs[: cfg.batch_size], ds.labels[: cfg.batch_size])


def _cmd_train(args) -> int:
    from elr import train

    values = json.loads(open(args.config).read()) if args.config else {}
    values.update(book.parse_overrides(args.set or []))  # TrainConfig checks every value and names the key
    cfg = train.TrainConfig.from_dict(values)
    run_dir = args.run_dir or train.default_root() / train.run_key(cfg)
    result = train.train(cfg, run_dir, resume=not args.fresh)
    if "final" in result.metrics:  # rank 0 (or a single process) reports
        print(json.dumps({"run_dir": str(result.run_dir), "status": result.status, "diverged_at": result.diverged_at,
                          "final": result.metrics["final"]}, indent=2))
    return 0


def _cmd_runs(args) -> int:
    from pathlib import Path

    from elr import runs as run_cache

    if args.yes and not args.prune:
        raise ValueError("--yes confirms --prune; use `elr runs --prune --yes`")
    root = run_cache.default_root() if args.root is None else Path(args.root)
    if args.prune:
        run_cache.check_runs_root(root)  # before listing anything: a source tree is refused outright
    listed = run_cache.list_runs(root)
    shown = [r for r in listed if r.stale] if args.stale or args.prune else listed
    for r in shown:
        why = "" if not r.stale else ("  STALE: other code or torch" if not r.current else "  STALE: no chapter uses it")
        print(f"{r.name}  {r.status:10s}  {','.join(r.chapters) or '-':30s}  {r.summary}{why}")
    others = run_cache.not_runs(root)
    if others:
        print(f"elr runs: not runs, never touched: {', '.join(others)}")
    if args.prune and args.yes:
        removed = run_cache.prune_runs(root)
        for name in removed:
            print(f"deleted {root / name}")
        kept = sorted({r.name for r in shown} - set(removed))
        print(f"elr runs: deleted {len(removed)} stale run(s) from {root}"
              + (f"; kept {len(kept)} another process holds: {', '.join(kept)}" if kept else ""))
    elif args.prune:
        for r in shown:
            print(f"would delete {root / r.name}")
        print(f"elr runs: would delete {len(shown)} stale run(s) from {root}; nothing deleted. "
              "Run `elr runs --prune --yes` to delete them")
    else:
        print(f"elr runs: {len(listed)} run(s) under {root}, {sum(r.stale for r in listed)} stale"
              + ("; `elr runs --prune` shows what it would delete" if any(r.stale for r in listed) else ""))
    return 0


def _cmd_data(args) -> int:
    from elr import data

    ds = data.load(args.name, True, args.root, download=True)
    print(f"elr: {getattr(ds, 'description', args.name)} under {args.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="elr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("book", help="execute the chapters with papermill and build the HTML book")
    p.add_argument("--profile", default="quick", choices=book.PROFILES)
    p.add_argument("--only", nargs="+", metavar="CHAPTER", help="execute only these chapters (others are reused)")
    p.add_argument("--no-html", action="store_true", help="execute chapters but skip jupyter-book")
    p.add_argument("--fresh", action="store_true", help="retrain runs instead of reusing finished ones in runs/")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds one chapter may run (default ELR_CHAPTER_TIMEOUT or {book.DEFAULT_TIMEOUT:g})")
    p.add_argument("-p", action="append", metavar="NAME=VALUE",
                   help="set a parameter in every chapter that declares it, e.g. -p seed=1000")
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser("robust", help="build every chapter again with another base seed, a process pool and one "
                                      "thread, each in its own run root (make robust)")
    p.add_argument("variants", nargs="*", help=f"default: all of {', '.join(book.ROBUST_VARIANTS)}")
    p.add_argument("--only", nargs="+", metavar="CHAPTER", help="build only these chapters")
    p.add_argument("--profile", default="quick", choices=book.PROFILES)
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds one chapter may run (default ELR_CHAPTER_TIMEOUT or {book.DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=_cmd_robust)

    p = sub.add_parser("run", help="execute one chapter into book/chapters/")
    p.add_argument("chapter", help="e.g. 04, 04_large_learning_rates or large_learning_rates")
    p.add_argument("--profile", default="quick", choices=book.PROFILES)
    p.add_argument("-p", action="append", metavar="NAME=VALUE", help="override one parameter (repeatable)")
    p.add_argument("--fresh", action="store_true", help="retrain runs instead of reusing finished ones in runs/")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds the chapter may run (default ELR_CHAPTER_TIMEOUT or {book.DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("params", help="list a chapter's parameters, types, constraints and profiles")
    p.add_argument("chapter")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("prove", help="check every statement of the paper symbolically and numerically")
    p.set_defaults(func=_cmd_prove)

    p = sub.add_parser("audit", help="which weights of a model auto-tune (are scale-invariant), and why")
    p.add_argument("model", help="resnet20, resnet56, resnet110, resnet<6n+2>, resnet101, bnrelu<depth>, resmlp<depth>, "
                                 "or resnet-v2-block (a residual joining before its normalisation)")
    p.add_argument("--no-shortcut", action="store_true", help="the paper's NoShort network")
    p.add_argument("--bn-affine", action="store_true", help="BatchNorm with affine parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("measure", help="per-layer ELRs and S_rel at initialisation or after N steps")
    p.add_argument("model")
    p.add_argument("--no-shortcut", action="store_true")
    p.add_argument("--steps", type=int, default=0, help="SGD steps before measuring (0 = at initialisation)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--random-walk", action="store_true", help="replace gradients by the random walk (Def. 4.2)")
    p.add_argument("--dataset", default="digits", help="digits (offline), cifar10, cifar100")
    p.add_argument("--data-root", default="data")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_measure)

    p = sub.add_parser("train", help="one training run of elr.train")
    p.add_argument("config", nargs="?", help="a JSON file of TrainConfig fields")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a TrainConfig field (repeatable)")
    p.add_argument("--run-dir", help="default: runs/<hash of config, training code and torch version>")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("runs", help="list the runs under runs/ and which are stale (other code, or unused)")
    p.add_argument("--root", default=None, help="where the runs live (default: ELR_RUNS or runs)")
    p.add_argument("--stale", action="store_true", help="list only the stale runs")
    p.add_argument("--prune", action="store_true",
                   help="show the stale runs that would be deleted (nothing else is ever touched)")
    p.add_argument("--yes", action="store_true", help="with --prune: delete them")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("claims", help="what each registered claim measured in one or more builds, its predicted "
                                      "flip probability, and the role the gate rule allows (notebooks/claims.toml)")
    p.add_argument("dirs", nargs="*", help="claims records of executed builds (default: book/chapters/claims)")
    p.add_argument("--propose", action="store_true", help="the roles the gate rule allows, from the pilot "
                   "records in the first directory (each candidate decided again at its gate's Bonferroni level); "
                   "further directories are confirmation builds, at base seeds of their own")
    p.set_defaults(func=_cmd_claims)

    p = sub.add_parser("data", help="download a data set (needs network access)")
    p.add_argument("name", choices=["cifar10", "cifar100"])
    p.add_argument("--root", default="data")
    p.set_defaults(func=_cmd_data)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except book.ParameterError as err:
        print(f"elr: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"elr: error: {err}", file=sys.stderr)
        return 2
    except (book.ChapterFailed, RuntimeError, FileNotFoundError) as err:
        print(f"elr: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
