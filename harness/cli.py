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
DB_FILE = "harness.duckdb"

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
    _check_datasets_reachable(catalog, specs, store)
    catalog.pm.register(ProgressDisplay(), name="harness-progress")
    report = run_grid(catalog, suite, specs, store, device=device, options=exec_options(overrides))
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if report.interrupted:
        return 130
    _print_leaderboard(store, suite=suite.name, scale=specs[0].scale, variants={s.variant_label for s in specs}, fmt=overrides.get("format", "table"))
    return 0


def _check_datasets_reachable(catalog: Any, specs: list[Any], store: Any) -> None:
    """Load every data set the runs still to train need that is not embedded, before the first
    run: an unreachable hub then fails the command at once, not after the grid's first data set."""
    from harness.data import LoadOptions
    from harness.runner import default_cache_dir

    names = dict.fromkeys(s.recipe_dict()["dataset"] for s in specs if not store.has_result(s.run_id))
    for name in names:
        source = catalog.dataset(name)
        if not source.offline:
            source.load(LoadOptions(cache_dir=default_cache_dir() / "datasets"))


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


def _print_leaderboard(
    store: Any, *, suite: str | None, scale: str | None, variants: set[str] | None, fmt: str, test: str = "t", correction: str = "holm",
    axes: dict[str, list[str]] | None = None,
) -> None:
    from harness.leaderboard import axes_match, build_boards, render

    con = store.connect(read_only=True)
    try:
        boards = build_boards(con, suite=suite, scale=scale, test=test, correction=correction)
    finally:
        con.close()
    if variants is not None:
        boards = [b for b in boards if b.protocol["variant"] in variants]
    if axes:
        boards = [b for b in boards if axes_match(b.protocol["variant"], axes)]
    if not boards:
        what = f"suite {suite!r}" if suite else "any suite"
        narrowed = "".join(f" {k}={','.join(v)}" for k, v in (axes or {}).items())
        raise HarnessError(f"no stored runs for {what}" + (f" at scale={scale}" if scale else "") + (f" with{narrowed}" if narrowed else "") + f" in {store.root}; run `harness run suite={suite or 'NAME'}{narrowed}` first")
    print(render(boards, fmt))


def _axis_filters(store: Any, overrides: dict[str, str], known: set[str]) -> dict[str, list[str]]:
    """Keys beyond `known` name the stored suites' own axes (`setting=episodic`, `ratio=10,100`):
    axis -> accepted values. Any other key is an error that lists the valid ones."""
    from harness.leaderboard import variant_axes
    from harness.spec import split_values

    extra = {k: v for k, v in overrides.items() if k not in known}
    if not extra:
        return {}
    con = store.connect(read_only=True)
    try:
        labels = con.execute("SELECT DISTINCT suite, variant FROM runs").fetchall()
    finally:
        con.close()
    stored: dict[str, set[str]] = {}
    for suite, label in labels:
        if overrides.get("suite") in (None, suite):
            for axis in variant_axes(label):
                stored.setdefault(axis, set()).add(suite)
    unknown = sorted(set(extra) - set(stored))
    if unknown:
        axes = ", ".join(f"{a} ({', '.join(sorted(s))})" for a, s in sorted(stored.items())) or "none"
        raise HarnessError(f"`harness leaderboard` does not take {', '.join(unknown)}; it takes {', '.join(sorted(known))}, and the axes of the stored suites: {axes}")
    return {k: split_values(v) for k, v in extra.items()}


def _choice(overrides: dict[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = overrides.get(key, default)
    if value not in choices:
        raise HarnessError(f"bad value {value!r} for {key}: expected one of {', '.join(choices)}")
    return value


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.spec import parse_overrides
    from harness.stats import CORRECTIONS, TESTS
    from harness.store import ResultStore

    if args.overrides[:1] == ["aggregate"]:
        return cmd_leaderboard_aggregate(args.overrides[1:])
    overrides = parse_overrides(args.overrides)
    known = {"suite", "scale", "variant", "format", "results", "test", "correction"}
    fmt = overrides.get("format", "table")
    if fmt not in _formats():
        raise HarnessError(f"bad value {fmt!r} for format: expected one of {', '.join(_formats())}")
    test, correction = _choice(overrides, "test", "t", TESTS), _choice(overrides, "correction", "holm", CORRECTIONS)
    store = ResultStore(_results_dir(overrides))  # a missing or unreadable database is built from the result files
    axes = _axis_filters(store, overrides, known)
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
    _print_leaderboard(store, suite=suite, scale=overrides.get("scale"), variants={variant} if variant else None, fmt=fmt, test=test, correction=correction, axes=axes)
    return 0


def _stored_boards(overrides: dict[str, str], *, baselines: dict[str, str] | None = None) -> list[Any]:
    """The boards of the results folder, narrowed by suite=, scale= and variant= where given."""
    from harness.leaderboard import build_boards
    from harness.store import ResultStore

    store = ResultStore(_results_dir(overrides))
    con = store.connect(read_only=True)
    try:
        boards = build_boards(con, suite=overrides.get("suite"), scale=overrides.get("scale"), baselines=baselines)
    finally:
        con.close()
    if "variant" in overrides:
        boards = [b for b in boards if b.protocol["variant"] == overrides["variant"]]
    if not boards:
        narrowed = " ".join(f"{k}={overrides[k]}" for k in ("suite", "scale", "variant") if k in overrides)
        raise HarnessError(f"no stored runs{' for ' + narrowed if narrowed else ''} in {store.root}; run `harness run suite=NAME` first")
    return boards


def cmd_leaderboard_aggregate(arguments: list[str]) -> int:
    """`harness leaderboard aggregate`: one ranking of methods across every stored board."""
    from harness.aggregate import FORMATS, aggregate, render
    from harness.spec import parse_overrides

    overrides = parse_overrides(arguments)
    _only(overrides, {"results", "format", "suite", "scale"}, "leaderboard aggregate")
    fmt = _choice(overrides, "format", "table", FORMATS)
    print(render(aggregate(_stored_boards(overrides)), fmt))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.spec import parse_overrides
    from harness.verify import DEFAULT_TARGETS, load_targets, verify, write_targets
    from harness.verify import render as render_report

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"results", "targets", "write", "suite", "scale", "variant"}, "verify")
    if "write" in overrides:
        if "targets" in overrides:
            raise HarnessError("give either targets=FILE (check against it) or write=FILE (write one from the stored results), not both")
        boards = _stored_boards(overrides, baselines={})  # targets need no baseline, hence no plugins
        written = write_targets(boards, Path(overrides["write"]))
        print(f"wrote {written} target(s) for {len(boards)} board(s) to {overrides['write']}")
        return 0
    targets = load_targets(Path(overrides.get("targets", str(DEFAULT_TARGETS))))
    narrowing = {k: v for k, v in overrides.items() if k in ("suite", "scale", "variant")}
    if narrowing:
        raise HarnessError(f"{', '.join(narrowing)} only narrow write=FILE; verify checks every board of the targets file")
    report = verify(_stored_boards(overrides, baselines={}), targets)
    print(render_report(report))
    return 1 if report.drifted else 0


LIST_SECTIONS = ("kinds", "methods", "suites", "datasets", "models")


def _catalog_rows(catalog: Any, section: str, pattern: str | None) -> list[dict[str, Any]]:
    """One dict per installed object of a section, for the table and for `format=json`."""
    import fnmatch

    if section == "kinds":
        return [
            {"kind": k.name, "summary": k.summary, "trains": k.trains, "interface": f"{k.interface.__module__}.{k.interface.__name__}",
             "methods": [m.name for m in catalog.methods if m.kind == k.name], "template": k.scaffold is not None, "plugin": f"{k.plugin} {k.plugin_version}"}
            for k in sorted(catalog.kinds, key=lambda k: k.sort_key)
        ]
    if section == "methods":
        return [
            {"method": m.name, "kind": m.kind, "version": m.version, "summary": m.summary, "paper": m.paper, "url": m.url,
             "hyper-parameters": [p.as_dict() for p in m.params], "plugin": f"{m.plugin} {m.plugin_version}"}
            for m in catalog.methods
            if not pattern or fnmatch.fnmatchcase(m.name, pattern)
        ]
    if section == "suites":
        return [
            {"suite": s.name, "version": s.version, "summary": s.summary, "ranks": sorted(s.ranked_kind_names(catalog)),
             "primary metric": f"{s.primary} ({'higher' if s.metric(s.primary).higher_is_better else 'lower'} is better)",
             "axes": [p.as_dict() for p in s.axes], "scales": list(s.scales), "plugin": f"{s.plugin} {s.plugin_version}"}
            for s in catalog.suites
        ]
    if section == "datasets":
        return [{"dataset": d.name, "summary": d.summary, "source": "embedded" if d.offline else "hub", "citation": d.citation, "plugin": f"{d.plugin} {d.plugin_version}"} for d in catalog.datasets]
    rows = [{"model": m.name, "summary": m.summary, "paper": m.paper, "plugin": f"{m.plugin} {m.plugin_version}"} for m in catalog.models]
    return [*rows, {"model": "timm:NAME", "summary": "any timm architecture, trained from scratch", "paper": "", "plugin": "timm"}]


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.spec import parse_overrides

    words = list(args.args)
    what = words.pop(0) if words and words[0] in LIST_SECTIONS else "all"
    overrides = parse_overrides([w for w in words if "=" in w])
    _only(overrides, {"format"}, "list")
    fmt = overrides.get("format", "table")
    if fmt not in ("table", "json"):
        raise HarnessError(f"bad value {fmt!r} for format: expected table or json")
    rest = [w for w in words if "=" not in w]
    if len(rest) > 1 or (rest and what not in ("methods", "all")):
        raise HarnessError(f"`harness list` takes one section ({', '.join(LIST_SECTIONS)}), a method-name pattern and format=table|json; got {' '.join(args.args)!r}")
    pattern = rest[0] if rest else None
    catalog = _load_catalog()
    sections = list(LIST_SECTIONS) if what == "all" else [what]
    tables = {section: _catalog_rows(catalog, section, pattern) for section in sections}
    if pattern and not tables.get("methods"):
        raise HarnessError(f"no installed method matches {pattern!r}; `harness list methods` shows them all")
    if fmt == "json":
        print(json.dumps(tables if what == "all" else tables[what], indent=2, default=str))
        return 0
    wrap = lambda text, width=60: "\n".join(textwrap.wrap(str(text), width)) or "-"  # noqa: E731
    widths = {"summary": 60, "paper": 40, "hyper-parameters": 40, "citation": 40, "methods": 50, "axes": 40}
    for section, rows in tables.items():
        def cell(key: str, value: Any) -> str:
            if key in ("hyper-parameters", "axes"):
                value = ", ".join(f"{p['name']}: {p['type']} = {p['default']!r}" for p in value) or "-"
            elif isinstance(value, list):
                value = ", ".join(map(str, value)) or "-"
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            return wrap(value, widths.get(key, 60))

        headers = list(rows[0]) if rows else []
        hidden = {"url", "interface", "version"} if section == "methods" else {"interface"}
        headers = [h for h in headers if h not in hidden]
        body = [[cell(h, row[h]) for h in headers] for row in rows]
        print(f"{section}:\n{tabulate(body, headers=headers, tablefmt='simple')}\n")
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

    duration = "-" if record.get("duration_s") is None else f"{record['duration_s']:.1f}s"
    print(f"run {record['run_id']}  status: {record['status']}  entry: {record['entry']}  ({duration}, finished {record.get('finished_at') or '-'})\n")
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
    if not paths:
        raise HarnessError("what to collect? give result folders (holding runs/), result.json files or .duckdb files")
    catalog = _load_catalog()  # the installed suite cards decide primary metrics and baselines
    report = collect(paths, _results_dir(overrides), suites=list(catalog.suites))
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
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
    from harness.scaffold import new_plugin, plugin_names
    from harness.spec import parse_overrides

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"kind", "dir"}, "new-plugin")
    kind = overrides.get("kind", "loss")
    catalog = _load_catalog()
    target = new_plugin(args.name, kind=kind, directory=Path(overrides["dir"]) if "dir" in overrides else None, catalog=catalog)
    names = plugin_names(args.name)
    print(f"created {target}/ with the {kind} method {names.method!r} (package {names.package}, entry point {names.entry_point!r})\n")
    print("next steps:")
    print(f"  pip install -e {target}")
    print(f"  harness list methods '{names.method}'")
    print(f"  harness run suite={catalog.kinds.get(kind).suite or 'long_tail'} method={names.method} seeds=1   (`harness list suites` shows what each suite ranks)")
    print(f"  cd {target} && python -m pytest -q")
    return 0


REPRODUCE_KEYS = {"results", "device", "seeds", "shrink", "jobs", "executor", "address", "timeout", "retries", "compile"}


def cmd_reproduce(args: argparse.Namespace) -> int:
    """`harness reproduce SUITE`: train the suite's headline settings at scale=paper and set the
    stored results beside the papers' numbers (harness/reproduce.py holds the settings)."""
    from harness.params import Param
    from harness.reproduce import headlines_of, render, reproduce
    from harness.spec import parse_overrides

    overrides = parse_overrides(args.overrides)
    _only(overrides, REPRODUCE_KEYS, "reproduce")
    headlines_of(args.suite)  # an unknown suite fails before plugins load
    seeds = Param("seeds", int, 3, low=1, high=1000).parse(overrides.get("seeds", "3"), where="seeds")
    shrink = Param("shrink", bool, False).parse(overrides.get("shrink", "false"), where="shrink")
    options = exec_options(overrides)
    catalog = _load_catalog()
    from harness.engine import resolve_device
    from harness.progress import ProgressDisplay
    from harness.store import ResultStore

    store = ResultStore(_results_dir(overrides))
    catalog.pm.register(ProgressDisplay(), name="harness-progress")
    result = reproduce(catalog, args.suite, seeds=seeds, shrink=shrink, store=store, device=resolve_device(overrides.get("device", "auto")), options=options)
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if result.interrupted:
        return 130
    print(render(result.rows, shrink=shrink))
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
    p = sub.add_parser(
        "leaderboard", help="print leaderboards from stored results (no training)",
        description="Keys: suite, scale, variant, the stored suites' own axes (e.g. setting=episodic, ratio=10,100), "
        "format=table|markdown|csv|json (json writes null for a value that is not finite), results, test=t|wilcoxon (paired test vs the baseline; "
        "wilcoxon needs >= 6 matched seeds), correction=holm|bh|none (of the board's p-values; default holm). "
        "`harness leaderboard aggregate [results=DIR] [format=table|markdown|json] [suite=..] [scale=..]` ranks methods across "
        "every board: average rank, Friedman test and Nemenyi CD, IQM of normalised scores with stratified bootstrap intervals, "
        "probability of improvement over the baseline, performance profiles.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser(
        "verify", help="compare stored results with regression targets; exit 1 on drift",
        description="Keys: results=DIR, targets=FILE (default benchmarks/regression_targets.json). Each target entry is the mean of the "
        "primary metric over listed seeds with a tolerance; a mean outside it, a missing seed or a moved protocol is drift (exit 1). "
        "write=FILE [suite=..] [scale=..] [variant=..] writes a targets file from the stored boards instead "
        "(tolerance = max(0.005, 3*sqrt(2/n)*max(std, the board's median std))).",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("list", help="list installed kinds, methods, suites, datasets and models",
                       description="harness list [kinds|methods|suites|datasets|models] [PATTERN] [format=table|json]: PATTERN filters method names (wildcards, e.g. 'ldam*').")
    p.add_argument("args", nargs="*", metavar="[SECTION] [PATTERN] [format=json]")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("plugins", help="list plugin packages and what each registered")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("show", help="print a run's spec, metrics and provenance")
    p.add_argument("run_id", help="a run id or a unique prefix of one")
    p.add_argument("overrides", nargs="*", metavar="results=DIR")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("collect", help="merge result folders or databases into one database (de-duplicated by run id)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="result folders (holding runs/), result.json files or harness .duckdb files (read as data: no view or macro in them is run); results=DIR names the target")
    p.set_defaults(func=cmd_collect)
    p = sub.add_parser("publish", help="write a self-contained static leaderboard site", description="Keys: out=DIR (default site), results=DIR. Open DIR/index.html from disk or any static host; no network needed.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_publish)
    p = sub.add_parser("bench", help="measure the speed targets side by side (medians and ratios)", description="Keys: only=engine,pipeline,sweep,cache,leaderboard,startup (default all), repeats=N (default 5), out=FILE.md.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("new-plugin", help="create a plugin package with an example method, ready to pip install", description="Write ./NAME (or dir=PATH): pyproject with the harness entry point, a module with one example method, its test (the conformance kit) and a README. Keys: kind=KIND (any installed kind with a template, see `harness list kinds`; default loss), dir=PATH.")
    p.add_argument("name", help="the distribution name, e.g. my-methods (lowercase letters, digits, '-')")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_new_plugin)
    p = sub.add_parser(
        "reproduce", help="train a suite's headline settings at scale=paper and compare with the papers' numbers",
        description="Keys: results=DIR, device=auto|cpu|cuda, seeds=N (default 3), shrink=true (a tiny stand-in recipe for a CPU test; "
        "not comparable), and the execution keys of `harness run` (jobs, executor, address, timeout, retries, compile). "
        "Needs the paper's data (the Hugging Face hub once, then the cache) and, in practice, a GPU.",
    )
    p.add_argument("suite", help="a suite with headline settings in harness/reproduce.py (long_tail, ood)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_reproduce)
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
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
            raise
        # a results database damaged in a way that opening it did not show
        print(f"harness: error: the results database could not be read ({str(exc).strip().splitlines()[0]}); move {DB_FILE} out of "
              "the results folder and run `harness collect RESULTS_DIR` to rebuild it from the result files", file=sys.stderr)
        return 2
