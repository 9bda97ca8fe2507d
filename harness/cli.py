"""The `harness` command line. Heavy modules (torch, duckdb) are imported inside the commands
that need them, so `harness --help` answers at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

DEFAULT_RESULTS = "harness-results"

EPILOG = """\
examples:
  harness run suite=long_tail                         every installed loss, 3 seeds, scale=tiny
  harness run suite=long_tail method=ce,focal,ldam_drw ratio=10,100 seeds=5
  harness run suite=long_tail method=focal focal.gamma=0.5,1,2 epochs=30
  harness run suite=long_tail jobs=2 timeout=600           2 worker processes, 10 min per run
  harness run suite=long_tail executor=ray address=auto     on a Ray cluster
  harness leaderboard suite=long_tail format=markdown
  harness list methods
  harness show RUN_ID

Results go to ./harness-results (results=DIR or $HARNESS_RESULTS to change).
"""


def _results_dir(overrides: dict[str, str]) -> Path:
    return Path(overrides.get("results") or os.environ.get("HARNESS_RESULTS") or DEFAULT_RESULTS)


def _only(overrides: dict[str, str], allowed: set[str], command: str) -> None:
    extra = sorted(set(overrides) - allowed)
    if extra:
        raise HarnessError(f"`harness {command}` does not take {', '.join(extra)}; it takes {', '.join(sorted(allowed))}")


def _load_catalog() -> Any:
    from harness.catalog import broken_plugins_warning, load_catalog

    catalog = load_catalog()
    sys.stderr.write(broken_plugins_warning(catalog))
    return catalog


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from harness.spec import build_grid, parse_overrides

    overrides = parse_overrides(args.overrides)
    if "format" in overrides and overrides["format"] not in _formats():
        raise HarnessError(f"bad value {overrides['format']!r} for format: expected one of {', '.join(_formats())}")
    exec_options(overrides)  # validate before loading plugins or training
    catalog = _load_catalog()
    suite, specs = build_grid(catalog, overrides)
    from harness.engine import resolve_device
    from harness.progress import ProgressDisplay
    from harness.runner import run_grid
    from harness.store import ResultStore

    device = resolve_device(overrides.get("device", "auto"))
    store = ResultStore(_results_dir(overrides))
    catalog.pm.register(ProgressDisplay(), name="harness-progress")
    report = run_grid(catalog, suite, specs, store, device=device, options=exec_options(overrides))
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if report.interrupted:
        return 130
    _print_leaderboard(store, suite=suite.name, scale=specs[0].scale, variants={s.variant_label for s in specs}, fmt=overrides.get("format", "table"))
    return 0


def exec_options(overrides: dict[str, str]) -> Any:
    """`jobs`, `executor`, `address`, `timeout`, `retries`: how the grid runs, not what it is."""
    from harness.params import Param
    from harness.runner import ExecOptions

    executor = Param("executor", str, "local", choices=("local", "ray")).parse(overrides.get("executor", "local"), where="executor")
    jobs = Param("jobs", int, 1, low=1, high=512).parse(overrides.get("jobs", "1"), where="jobs")
    timeout = Param("timeout", float, 1.0, low=0.001).parse(overrides["timeout"], where="timeout") if "timeout" in overrides else None
    retries = Param("retries", int, 1, low=0, high=100).parse(overrides.get("retries", "1"), where="retries")
    if "address" in overrides and executor != "ray":
        raise HarnessError("address= is the Ray cluster address; it needs executor=ray")
    compile_model = Param("compile", bool, False).parse(overrides.get("compile", "false"), where="compile")
    return ExecOptions(executor=executor, jobs=jobs, timeout_s=timeout, retries=retries, address=overrides.get("address"), compile_model=compile_model)


def _formats() -> tuple[str, ...]:
    from harness.leaderboard import FORMATS

    return FORMATS


def _print_leaderboard(store: Any, *, suite: str | None, scale: str | None, variants: set[str] | None, fmt: str) -> None:
    from harness.leaderboard import build_boards, render

    con = store.connect(read_only=True)
    try:
        boards = build_boards(con, suite=suite, scale=scale)
    finally:
        con.close()
    if variants is not None:
        boards = [b for b in boards if b.protocol["variant"] in variants]
    if not boards:
        what = f"suite {suite!r}" if suite else "any suite"
        raise HarnessError(f"no stored runs for {what}" + (f" at scale={scale}" if scale else "") + f" in {store.root}; run `harness run suite={suite or 'NAME'}` first")
    print(render(boards, fmt))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.spec import parse_overrides
    from harness.store import ResultStore

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"suite", "scale", "variant", "format", "results"}, "leaderboard")
    fmt = overrides.get("format", "table")
    if fmt not in _formats():
        raise HarnessError(f"bad value {fmt!r} for format: expected one of {', '.join(_formats())}")
    store = ResultStore(_results_dir(overrides))
    if not store.db_path.exists() and store.result_paths():
        store.sync()  # result files without a database (e.g. copied in): build it
    con = store.connect(read_only=True)
    try:
        suites = [r[0] for r in con.execute("SELECT DISTINCT suite FROM runs ORDER BY 1").fetchall()]
    finally:
        con.close()
    suite = overrides.get("suite")
    if suite is not None and suite not in suites:
        from harness.errors import UnknownNameError

        raise UnknownNameError("suite with stored results", suite, suites)
    variant = overrides.get("variant")
    _print_leaderboard(store, suite=suite, scale=overrides.get("scale"), variants={variant} if variant else None, fmt=fmt)
    return 0


def _params_text(params: Any) -> str:
    return ", ".join(f"{p.name}: {p.type_name} = {p.default!r}" for p in params) or "-"


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    what = args.what or "all"
    catalog = _load_catalog()
    sections = ["methods", "suites", "datasets", "models"] if what == "all" else [what]
    wrap = lambda text, width=60: "\n".join(textwrap.wrap(text, width)) or "-"  # noqa: E731
    for section in sections:
        if section == "methods":
            rows = [
                [m.name, m.kind, wrap(m.summary), wrap(m.paper, 40), wrap(_params_text(m.params), 40), f"{m.plugin} {m.plugin_version}"]
                for m in catalog.methods
                if not args.pattern or __import__("fnmatch").fnmatchcase(m.name, args.pattern)
            ]
            headers = ["method", "kind", "summary", "paper", "hyper-parameters", "plugin"]
        elif section == "suites":
            rows = [
                [s.name, s.version, wrap(s.summary), ", ".join(s.ranks), f"{s.primary} ({'higher' if s.metric(s.primary).higher_is_better else 'lower'} is better)", _params_text(s.axes), ", ".join(s.scales), f"{s.plugin} {s.plugin_version}"]
                for s in catalog.suites
            ]
            headers = ["suite", "version", "summary", "ranks", "primary metric", "axes", "scales", "plugin"]
        elif section == "datasets":
            rows = [[d.name, wrap(d.summary), "embedded" if d.offline else "hub", wrap(d.citation, 40), f"{d.plugin} {d.plugin_version}"] for d in catalog.datasets]
            headers = ["dataset", "summary", "source", "citation", "plugin"]
        else:
            rows = [[m.name, wrap(m.summary), wrap(m.paper, 40) or "-", f"{m.plugin} {m.plugin_version}"] for m in catalog.models]
            rows.append(["timm:NAME", "any timm architecture, trained from scratch", "-", "timm"])
            headers = ["model", "summary", "paper", "plugin"]
        print(f"{section}:\n{tabulate(rows, headers=headers, tablefmt='simple')}\n")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    catalog = _load_catalog()
    rows = []
    for p in catalog.plugins.values():
        registered = "; ".join(f"{what}s: {', '.join(names)}" for what, names in p.registered.items()) or "-"
        rows.append([p.name, f"{p.dist} {p.version}", p.module, "ok" if p.ok else f"BROKEN: {p.error}", "\n".join(textwrap.wrap(registered, 70))])
    print(tabulate(rows, headers=["plugin", "package", "module", "status", "registered"], tablefmt="simple"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from harness.spec import parse_overrides
    from harness.store import CorruptResult, ResultStore, read_result

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"results"}, "show")
    store = ResultStore(_results_dir(overrides))
    matches = [p for p in store.result_paths() if p.parent.name.startswith(args.run_id)]
    if not matches:
        raise HarnessError(f"no stored run with id {args.run_id!r} in {store.root}; `harness leaderboard format=json` or the runs/ folder lists run ids")
    if len(matches) > 1:
        raise HarnessError(f"run id prefix {args.run_id!r} is ambiguous: {', '.join(p.parent.name for p in matches[:5])}")
    try:
        record = read_result(matches[0])
    except CorruptResult as exc:
        raise HarnessError(f"the result file {matches[0]} is corrupt: {exc}") from None
    from tabulate import tabulate

    print(f"run {record['run_id']}  status: {record['status']}  entry: {record['entry']}  ({record['duration_s']:.1f}s, finished {record['finished_at']})\n")
    print("spec:\n" + textwrap.indent(json.dumps(record["spec"], indent=2, sort_keys=True), "  ") + "\n")
    rows = [[name, "-" if m["value"] is None else f"{m['value']:.6g}", "higher" if m["higher_is_better"] else "lower"] for name, m in record["metrics"].items()]
    if rows:
        print("metrics:\n" + textwrap.indent(tabulate(rows, headers=["metric", "value", "better"], tablefmt="simple"), "  ") + "\n")
    if record["series"]:
        print("series:\n" + "\n".join(f"  {name}: {', '.join('-' if v is None else f'{v:.4g}' for v in values)}" for name, values in record["series"].items()) + "\n")
    print("provenance:\n" + textwrap.indent(json.dumps(record["provenance"], indent=2, sort_keys=True), "  "))
    if record.get("error"):
        print("\nerror:\n" + textwrap.indent(record["error"].rstrip(), "  "))
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from harness.collect import collect
    from harness.spec import parse_overrides

    overrides = parse_overrides([a for a in args.paths if "=" in a])
    _only(overrides, {"results"}, "collect")
    paths = [Path(a) for a in args.paths if "=" not in a]
    report = collect(paths, _results_dir(overrides))
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{report.ingested} run(s) ingested into {_results_dir(overrides) / 'harness.duckdb'} ({report.copied} result file(s) copied, {len(report.problems)} skipped)")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from harness.site import publish
    from harness.spec import parse_overrides

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"out", "results"}, "publish")
    report = publish(_results_dir(overrides), Path(overrides.get("out") or "site"), catalog=_load_catalog())
    print(f"published {report.pages} page(s) for {report.runs} run(s) to {report.out}/ (open {report.out / 'index.html'})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import BENCHMARKS, machine_description, render_rows, run_benchmarks
    from harness.params import Param
    from harness.spec import parse_overrides, split_values

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"only", "repeats", "out"}, "bench")
    only = split_values(overrides.get("only", ",".join(BENCHMARKS)))
    unknown = [b for b in only if b not in BENCHMARKS]
    if unknown:
        raise HarnessError(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    repeats = Param("repeats", int, 5, low=1, high=100).parse(overrides.get("repeats", "5"), where="repeats")
    rows = run_benchmarks(only, repeats, progress=lambda text: print(text, file=sys.stderr, flush=True))
    text = f"machine: {machine_description()}\nmedians of {repeats} interleaved repeats\n\n{render_rows(rows)}"
    print(text)
    if "out" in overrides:
        Path(overrides["out"]).write_text(f"machine: {machine_description()}\n\nmedians of {repeats} interleaved repeats\n\n{render_rows(rows, 'markdown')}\n")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from harness.scaffold import SCAFFOLD_KINDS, new_plugin, plugin_names
    from harness.spec import parse_overrides

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"kind", "dir"}, "new-plugin")
    kind = overrides.get("kind", "loss")
    if kind not in SCAFFOLD_KINDS:
        raise HarnessError(f"bad value {kind!r} for kind: expected one of {', '.join(SCAFFOLD_KINDS)}")
    target = new_plugin(args.name, kind=kind, directory=Path(overrides["dir"]) if "dir" in overrides else None)
    names = plugin_names(args.name)
    print(f"created {target}/ with the {kind} method {names.method!r} (package {names.package}, entry point {names.entry_point!r})\n")
    print("next steps:")
    print(f"  pip install -e {target}")
    print(f"  harness list methods '{names.method}'")
    suite_of = {"loss": "long_tail", "augmentation": "long_tail", "tta": "ood", "unlearning": "unlearning", "merging": "continual", "strategy": "continual"}
    print(f"  harness run suite={suite_of.get(kind, 'long_tail')} method={names.method} seeds=1   (`harness list suites` shows what each suite ranks)")
    print(f"  cd {target} && python -m pytest -q")
    return 0


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark deep-learning methods (losses, augmentations, merging, unlearning, TTA) on standard suites.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from harness import __version__

    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("run", help="train a grid of runs and print the leaderboard", description="Train the grid given by key=value overrides (a comma sweeps a key). " + "Keys: suite, method, seed|seeds, scale, dataset, model, epochs, batch_size, lr, momentum, weight_decay, warmup_epochs, results, device, format, the suite's axes (e.g. ratio), METHOD.PARAM; execution (not part of a run's identity): jobs, executor=local|ray, address, timeout, retries, compile.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("leaderboard", help="print leaderboards from stored results (no training)", description="Keys: suite, scale, variant, format=table|markdown|csv|json, results.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("list", help="list installed methods, suites, datasets and models")
    p.add_argument("what", nargs="?", choices=["methods", "suites", "datasets", "models"])
    p.add_argument("pattern", nargs="?", help="wildcard filter on method names, e.g. 'ldam*'")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("plugins", help="list plugin packages and what each registered")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("show", help="print a run's spec, metrics and provenance")
    p.add_argument("run_id", help="a run id or a unique prefix of one")
    p.add_argument("overrides", nargs="*", metavar="results=DIR")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("collect", help="merge result folders or databases into one database (de-duplicated by run id)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="result folders (holding runs/) or .duckdb files; results=DIR names the target")
    p.set_defaults(func=cmd_collect)
    p = sub.add_parser("publish", help="write a self-contained static leaderboard site", description="Keys: out=DIR (default site), results=DIR. Open DIR/index.html from disk or any static host; no network needed.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_publish)
    p = sub.add_parser("bench", help="measure the speed targets side by side (medians and ratios)", description="Keys: only=engine,pipeline,sweep,cache,leaderboard,startup (default all), repeats=N (default 5), out=FILE.md.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("new-plugin", help="create a plugin package with an example method, ready to pip install", description="Write ./NAME (or dir=PATH): pyproject with the harness entry point, a module with one example method, its test (the conformance kit) and a README. Keys: kind=loss|augmentation|merging|unlearning|tta (default loss), dir=PATH.")
    p.add_argument("name", help="the distribution name, e.g. my-methods (lowercase letters, digits, '-')")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_new_plugin)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nharness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `harness leaderboard | head`
        return 0
