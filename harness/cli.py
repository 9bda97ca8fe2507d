"""The `harness` command line. Heavy modules (torch, duckdb) are imported inside the commands
that need them, so `harness --help` answers at once."""

from __future__ import annotations

import argparse
import dataclasses
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
  harness run suite=long_tail executor=slurm slurm_partition=gpu slurm_gpus_per_node=1   one SLURM job per run
  harness run suite=long_tail loggers=tensorboard,mlflow    log curves and metrics (log_dir=DIR)
  harness push hf://datasets/ORG/REPO                       share results; harness pull ... merges them
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
    from harness.card_memo import remember
    from harness.runner import default_cache_dir

    remember(catalog, default_cache_dir())  # collect and pull then read the suite cards without loading plugins
    return catalog


def _installed_cards() -> list[Any]:
    """The installed suite cards' facts that decide a stored record's primary metric, metric
    directions and baseline: from the memo a previous plugin load left, else by loading the plugins."""
    from harness.card_memo import installed_cards
    from harness.runner import default_cache_dir

    return installed_cards(default_cache_dir(), _load_catalog)


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


# keys of `harness run` that change how a grid runs or is watched, not what it computes (not part of
# any run's identity): taken out before the grid is built from the rest
LOGGER_KEYS = ("loggers", "log_dir")
SLURM_KEYS = {  # key -> (type, submitit parameter)
    "slurm_partition": (str, "partition"), "slurm_time": (int, "time_min"), "slurm_gpus_per_node": (int, "gpus_per_node"),
    "slurm_cpus_per_task": (int, "cpus_per_task"), "slurm_mem_gb": (float, "mem_gb"), "slurm_account": (str, "account"),
    "slurm_qos": (str, "qos"), "slurm_constraint": (str, "constraint"), "slurm_array_parallelism": (int, "array_parallelism"),
    "slurm_folder": (str, "folder"), "slurm_cluster": (str, "cluster"),
}
RUN_EXTRA_KEYS = (*LOGGER_KEYS, *SLURM_KEYS)


def _split_run_keys(overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(the keys the grid is built from, the logger and SLURM keys)."""
    extra = {k: v for k, v in overrides.items() if k in RUN_EXTRA_KEYS}
    return {k: v for k, v in overrides.items() if k not in RUN_EXTRA_KEYS}, extra


def _build_grid(catalog: Any, overrides: dict[str, str]) -> Any:
    from harness.spec import build_grid

    try:
        return build_grid(catalog, overrides)
    except HarnessError as exc:  # a misspelt logger or SLURM key: the grid's keys do not list them
        import difflib

        text = str(exc)
        if text.startswith("unknown key "):
            key = text.split("'")[1] if "'" in text else ""
            close = difflib.get_close_matches(key, RUN_EXTRA_KEYS, n=1)
            if close:
                raise HarnessError(f"unknown key {key!r}; did you mean {close[0]}? (execution keys: {', '.join(RUN_EXTRA_KEYS)})") from None
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from harness.spec import parse_overrides

    overrides = parse_overrides(args.overrides)
    if "format" in overrides and overrides["format"] not in _formats():
        raise HarnessError(f"bad value {overrides['format']!r} for format: expected one of {', '.join(_formats())}")
    rows = "tuned" if overrides.get("tune", "0") != "0" else "all"
    if _answer_from_memo(overrides, rows):
        return 0
    grid = execute_grid(overrides)
    for problem in grid.report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if grid.report.interrupted:
        return 130
    _remember_grid(overrides, grid)
    _print_leaderboard(grid.store, suite=grid.suite.name, scale=grid.specs[0].scale, variants={s.variant_label for s in grid.specs},
                       fmt=overrides.get("format", "table"), catalog=grid.catalog, rows=rows)
    return 0


def _answer_from_memo(overrides: dict[str, str], rows: str) -> bool:
    """A grid run before with the same plugin code and stored in full: print its board without
    loading plugins (harness.grid_memo). False (nothing printed) when the grid must be resolved."""
    from harness import grid_memo
    from harness.store import ResultStore

    results = _results_dir(overrides)
    if not (results / grid_memo.FOLDER).is_dir():
        return False
    memo = grid_memo.read(results, grid_memo.grid_key(overrides, grid_memo.plugin_fingerprint()))
    if memo is None:
        return False
    store = ResultStore(results)
    report = store.sync()
    if not set(memo.run_ids) <= report.done_ids():
        return False
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{len(memo.run_ids)} run(s) already stored, skipped", file=sys.stderr)
    validation = {memo.suite: memo.validation_metric} if memo.validation_metric else {}
    _print_leaderboard(store, suite=memo.suite, scale=memo.scale, variants=set(memo.variants), fmt=overrides.get("format", "table"), rows=rows,
                       validation=validation, reported={memo.suite: list(memo.reported)})
    return True


def _remember_grid(overrides: dict[str, str], grid: GridRun) -> None:
    """After a grid ran to the end with every run done, memoise what its keys resolved to."""
    from harness import grid_memo

    if not grid_memo.entry_points_only(grid.catalog):
        return  # plugins registered in-process (not through entry points): the fingerprint cannot see them
    done = grid.store.done_ids()
    if not grid.specs or not all(s.run_id in done for s in grid.specs):
        return
    key = grid_memo.grid_key(overrides, grid_memo.plugin_fingerprint())
    grid_memo.write(grid.store.root, key, grid_memo.memo_of(grid.catalog, grid.suite, grid.specs))


@dataclasses.dataclass
class GridRun:
    """What `execute_grid` did: the catalog, suite, specs, results store and the runner's report."""

    catalog: Any
    suite: Any
    specs: list[Any]
    store: Any
    report: Any


def execute_grid(overrides: dict[str, str], *, progress: bool = True) -> GridRun:
    """`harness run`'s work without its printing (the Python API calls it too): validate every key
    before anything loads or trains, then train and store the grid."""
    overrides, extra = _split_run_keys(overrides)
    options = exec_options({**overrides, **extra})  # validate before loading plugins or training
    if options.executor == "slurm":
        from harness.executors import check_slurm

        check_slurm(dict(options.slurm))
    loggers = _logger_names(extra)
    catalog = _load_catalog()
    suite, specs = _build_grid(catalog, overrides)
    from harness.engine import resolve_device
    from harness.progress import ProgressDisplay
    from harness.runner import run_grid
    from harness.store import ResultStore

    device = resolve_device(overrides.get("device", "auto"))
    store = ResultStore(_results_dir(overrides))
    _check_datasets_reachable(catalog, specs, store)
    if progress:
        catalog.pm.register(ProgressDisplay(), name="harness-progress")
    if options.executor == "slurm":
        slurm = dict(options.slurm)
        slurm.setdefault("folder", str(store.root / "slurm"))
        slurm["device"] = overrides.get("device", "auto")  # resolved on the compute node
        options = dataclasses.replace(options, slurm=tuple(sorted(slurm.items())))
    observer = None
    if loggers:
        from harness.loggers import RunLoggers

        observer = RunLoggers(loggers, Path(extra.get("log_dir") or store.root / "logs"), suite.name)
        catalog.pm.register(observer, name="harness-loggers")
    try:
        report = run_grid(catalog, suite, specs, store, device=device, options=options)
    finally:
        if observer is not None:
            observer.close()
    return GridRun(catalog, suite, specs, store, report)


def _logger_names(extra: dict[str, str]) -> list[str]:
    """`loggers=tensorboard,mlflow,wandb`, checked (with the extra to install) before anything trains."""
    from harness.spec import split_values

    if "log_dir" in extra and "loggers" not in extra:
        raise HarnessError("log_dir= is where loggers write; name them with loggers=tensorboard,mlflow,wandb")
    if "loggers" not in extra:
        return []
    from harness.loggers import check_available

    names = split_values(extra["loggers"])
    check_available(names)
    return names


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
    """`jobs`, `executor`, `address`, `timeout`, `retries`, `compile` and the `slurm_*` keys: how the grid runs, not what it is."""
    from harness.params import Param
    from harness.runner import ExecOptions

    executor = Param("executor", str, "local", choices=("local", "ray", "slurm")).parse(overrides.get("executor", "local"), where="executor")
    jobs = Param("jobs", int, 1, low=1, high=512).parse(overrides.get("jobs", "1"), where="jobs")
    timeout = Param("timeout", float, 1.0, low=0.001).parse(overrides["timeout"], where="timeout") if "timeout" in overrides else None
    retries = Param("retries", int, 1, low=0, high=100).parse(overrides.get("retries", "1"), where="retries")
    if "address" in overrides and executor != "ray":
        raise HarnessError("address= is the Ray cluster address; it needs executor=ray")
    compile_model = Param("compile", bool, False).parse(overrides.get("compile", "false"), where="compile")
    threads = Param("threads", int, 1, low=1, high=1024).parse(overrides["threads"], where="threads") if "threads" in overrides else None
    slurm = {}
    for key, (kind, name) in SLURM_KEYS.items():
        if key in overrides:
            if executor != "slurm":
                raise HarnessError(f"{key}= configures SLURM jobs; it needs executor=slurm")
            choices = ("slurm", "local", "debug") if key == "slurm_cluster" else None
            default = "slurm" if choices else kind(1)  # a valid default, so the Param checks values only
            slurm[name] = Param(key, kind, default, low=1 if kind is not str else None, choices=choices).parse(overrides[key], where=key)
    return ExecOptions(executor=executor, jobs=jobs, timeout_s=timeout, retries=retries, address=overrides.get("address"), compile_model=compile_model,
                       threads=threads, slurm=tuple(sorted(slurm.items())))


def _formats() -> tuple[str, ...]:
    from harness.leaderboard import FORMATS

    return FORMATS


def _print_leaderboard(
    store: Any, *, suite: str | None, scale: str | None, variants: set[str] | None, fmt: str, test: str = "t", correction: str = "holm",
    axes: dict[str, list[str]] | None = None, catalog: Any = None, rows: str = "all",
    validation: dict[str, str] | None = None, reported: dict[str, list[Any]] | None = None,
) -> None:
    """Print the stored boards. Published numbers and validation metrics come from the installed
    suites and methods (`catalog`, loaded when not given), or from `validation` and `reported`."""
    from harness.leaderboard import attach_reported, axes_match, build_boards, render

    if validation is None or reported is None:
        from harness.reported import collect_reported

        if catalog is None:
            from harness.catalog import load_catalog

            catalog = load_catalog()
        validation = {s.name: s.validation_metric for s in catalog.suites if s.validation_metric}
        reported = collect_reported(catalog)
    con = store.connect(read_only=True)
    try:
        boards = build_boards(con, suite=suite, scale=scale, test=test, correction=correction, rows=rows, validation_metrics=validation)
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
    attach_reported(boards, reported)
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
    from harness.leaderboard import BOARD_TESTS, ROWS
    from harness.spec import parse_overrides
    from harness.stats import CORRECTIONS
    from harness.store import ResultStore

    if args.overrides[:1] == ["aggregate"]:
        return cmd_leaderboard_aggregate(args.overrides[1:])
    overrides = parse_overrides(args.overrides)
    known = {"suite", "scale", "variant", "format", "results", "test", "correction", "rows"}
    fmt = overrides.get("format", "table")
    if fmt not in _formats():
        raise HarnessError(f"bad value {fmt!r} for format: expected one of {', '.join(_formats())}")
    test, correction = _choice(overrides, "test", "t", BOARD_TESTS), _choice(overrides, "correction", "holm", CORRECTIONS)
    rows = _choice(overrides, "rows", "all", ROWS)
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
    _print_leaderboard(store, suite=suite, scale=overrides.get("scale"), variants={variant} if variant else None, fmt=fmt, test=test, correction=correction, axes=axes, rows=rows)
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
            {"method": m.name, "kind": m.kind, "version": m.version,
             "summary": m.summary + ("" if m.default_grid else f" [not in default grids: {m.default_grid_note or 'run it with method='}]"),
             "paper": m.paper, "url": m.url,
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
                value = ", ".join(f"{p['name']}: {p['type']} = {p['default']!r}" + (f" (tune {p['search']})" if p.get("search") else "") for p in value) or "-"
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
    report = collect(paths, _results_dir(overrides), suites=_installed_cards())
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{report.ingested} run(s) ingested into {_results_dir(overrides) / 'harness.duckdb'} ({report.copied} result file(s) copied, {len(report.problems)} skipped)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """`harness push DEST`: the results folder's runs (and tables, and a dataset card) to any fsspec
    location; `artifacts=ID,...|all` sends trained-once models instead."""
    from harness.runner import default_cache_dir
    from harness.sharing import push, push_artifacts
    from harness.spec import parse_overrides, split_values

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"results", "artifacts", "cache"}, "push")
    if "artifacts" in overrides:
        report = push_artifacts(Path(overrides.get("cache") or default_cache_dir()), args.location, split_values(overrides["artifacts"]))
        return _artifact_summary(report, "pushed", args.location)
    result = push(_results_dir(overrides), args.location)
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    sent = f"{result.pushed} run(s) pushed ({result.with_predictions} with per-sample predictions)" if result.pushed else "nothing new to push"
    print(f"{sent}; {result.already} already there; {result.total} run(s) at {args.location}" + (f" ({len(result.files)} file(s) written)" if result.files else ""))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """`harness pull SRC`: merge the results at an fsspec location into the results folder, checked as
    `harness collect` checks; `artifacts=ID,...|all` fetches trained-once models into the cache."""
    from harness.runner import default_cache_dir
    from harness.sharing import pull, pull_artifacts
    from harness.spec import parse_overrides, split_values

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"results", "artifacts", "cache"}, "pull")
    if "artifacts" in overrides:
        report = pull_artifacts(args.location, Path(overrides.get("cache") or default_cache_dir()), split_values(overrides["artifacts"]))
        return _artifact_summary(report, "pulled and verified", args.location)
    report = pull(args.location, _results_dir(overrides), suites=_installed_cards())
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{report.ingested} run(s) ingested into {_results_dir(overrides) / 'harness.duckdb'} ({report.copied} result file(s) stored, {len(report.problems)} refused)")
    return 0


def _artifact_summary(report: Any, verb: str, where: str) -> int:
    for problem in report.refused:
        print(f"refused: {problem}", file=sys.stderr)
    print(f"{len(report.done)} artifact(s) {verb} ({', '.join(report.done) or '-'}); {len(report.present)} already there; {len(report.refused)} refused ({where})")
    return 2 if report.refused else 0


def cmd_rescore(args: argparse.Namespace) -> int:
    """`harness rescore`: recompute from stored per-sample predictions the metrics they can give
    (accuracy, ECE, NLL, Brier), beside the stored values; exit 1 if a recomputed one differs."""
    from tabulate import tabulate

    from harness.predictions import TOLERANCE, rescore
    from harness.spec import parse_overrides
    from harness.store import ResultStore

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"results", "suite", "format"}, "rescore")
    fmt = _choice(overrides, "format", "table", ("table", "markdown", "json"))
    store = ResultStore(_results_dir(overrides))
    store.sync()  # a database from before predictions were stored gains them from the files
    con = store.connect(read_only=True)
    try:
        rows = rescore(con, suite=overrides.get("suite"))
    finally:
        con.close()
    if not rows:
        raise HarnessError(f"no stored per-sample predictions in {store.root}" + (f" for suite {overrides['suite']!r}" if "suite" in overrides else "")
                           + "; runs of the suites that store them (long_tail, noisy_labels) write predictions.parquet beside result.json")
    differ = [r for r in rows if r.diff is not None and abs(r.diff) > TOLERANCE]
    if fmt == "json":
        print(json.dumps([{**r.__dict__, "diff": r.diff} for r in rows], indent=1))
    else:
        table = [[r.run_id, r.suite, r.entry, r.seed, r.split, r.score, r.metric or "-", "-" if r.stored is None else f"{r.stored:.6f}", f"{r.rescored:.6f}",
                  "-" if r.diff is None else f"{r.diff:+.2e}" + (" ≠" if abs(r.diff) > TOLERANCE else "")] for r in rows]
        print(tabulate(table, headers=["run", "suite", "entry", "seed", "split", "score", "metric", "stored", "rescored", "Δ"], tablefmt="github" if fmt == "markdown" else "simple", disable_numparse=True))
    checked = sum(r.diff is not None for r in rows)
    print(f"\n{len({r.run_id for r in rows})} run(s) rescored from stored predictions; {checked} stored metric(s) recomputed, "
          f"{len(differ)} differ by more than {TOLERANCE:g}", file=sys.stderr)
    return 1 if differ else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from harness.site import publish
    from harness.spec import parse_overrides

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"out", "results"}, "publish")
    report = publish(_results_dir(overrides), Path(overrides.get("out") or "site"), catalog=_load_catalog())
    print(f"published {report.pages} page(s) for {report.runs} run(s) to {report.out}/ (open {report.out / 'index.html'})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import BENCHMARKS, STORE_RUNS, machine_description, render_rows, run_benchmarks
    from harness.params import Param
    from harness.spec import parse_overrides, split_values

    overrides = parse_overrides(args.overrides)
    _only(overrides, {"only", "repeats", "out", "runs"}, "bench")
    only = split_values(overrides.get("only", ",".join(BENCHMARKS)))
    unknown = [b for b in only if b not in BENCHMARKS]
    if unknown:
        raise HarnessError(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    repeats = Param("repeats", int, 5, low=1, high=100).parse(overrides.get("repeats", "5"), where="repeats")
    store_runs = Param("runs", int, STORE_RUNS, low=10).parse(overrides.get("runs", str(STORE_RUNS)), where="runs")
    rows = run_benchmarks(only, repeats, progress=lambda text: print(text, file=sys.stderr, flush=True), store_runs=store_runs)
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
    stored results beside the papers' numbers (the suites and methods declare them: Suite.reported)."""
    from harness.params import Param
    from harness.reproduce import headlines, render, reproduce
    from harness.spec import parse_overrides

    overrides = parse_overrides(args.overrides)
    _only(overrides, REPRODUCE_KEYS, "reproduce")
    seeds = Param("seeds", int, 3, low=1, high=1000).parse(overrides.get("seeds", "3"), where="seeds")
    shrink = Param("shrink", bool, False).parse(overrides.get("shrink", "false"), where="shrink")
    options = exec_options(overrides)
    catalog = _load_catalog()
    headlines(catalog, args.suite)  # a suite without published numbers fails before anything trains
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
    p = sub.add_parser("run", help="train a grid of runs and print the leaderboard", description="Train the grid given by key=value overrides (a comma sweeps a key). " + "Keys: suite, method, seed|seeds, scale, dataset, model, epochs, batch_size, lr, momentum, weight_decay, warmup_epochs, results, device, format, the suite's axes (e.g. ratio), METHOD.PARAM, tune=N (also run N configurations drawn from each method's search distributions; the leaderboard picks one per entry on the validation split); execution (not part of a run's identity): jobs, executor=local|ray|slurm, address, timeout, retries, compile, threads (torch threads per run; default: the CPUs free for each of the jobs), loggers=tensorboard,mlflow,wandb, log_dir, slurm_partition, slurm_time (minutes), slurm_gpus_per_node, slurm_cpus_per_task, slurm_mem_gb, slurm_account, slurm_qos, slurm_constraint, slurm_array_parallelism, slurm_folder, slurm_cluster=slurm|local.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "leaderboard", help="print leaderboards from stored results (no training)",
        description="Keys: suite, scale, variant, the stored suites' own axes (e.g. setting=episodic, ratio=10,100), "
        "format=table|markdown|csv|json (json writes null for a value that is not finite), results, test=t|wilcoxon|mcnemar (paired test vs the baseline; "
        "wilcoxon needs >= 6 matched seeds; mcnemar uses the stored per-sample test predictions), correction=holm|bh|none (of the board's p-values; default holm), "
        "rows=all|tuned (tuned: of an entry run at several configurations, e.g. with tune=N, only its default row and its tuned row — "
        "the configuration with the best validation metric). "
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
    p = sub.add_parser(
        "push", help="send results (or trained-once artifacts) to any fsspec location, e.g. hf://datasets/ORG/REPO",
        description="harness push DEST [results=DIR]: the runs DEST lacks, as record files, plus the tables as Parquet and a dataset card "
        "(README.md). DEST: hf://datasets/ORG/REPO (the Hugging Face hub: log in first), memory://NAME, s3://BUCKET/PATH (with s3fs) or a "
        "local folder. artifacts=ID,ID|all [cache=DIR]: send trained-once models (safetensors + card with their key and SHA-256) instead.",
    )
    p.add_argument("location", metavar="DEST")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_push)
    p = sub.add_parser(
        "pull", help="merge results (or fetch artifacts) from an fsspec location, checked as collect checks them",
        description="harness pull SRC [results=DIR]: every record at SRC (from `harness push`, or a results folder stored there) is checked "
        "(schema, run id, predictions against their digest) and merged like `harness collect`, de-duplicated by run id; a bad one is refused "
        "with its address and the reason. artifacts=ID,ID|all [cache=DIR]: fetch trained-once models, each verified against its id and "
        "its weights' SHA-256 before it is stored.",
    )
    p.add_argument("location", metavar="SRC")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser(
        "rescore", help="recompute metrics from stored per-sample predictions (no training)",
        description="Keys: results=DIR, suite=NAME, format=table|markdown|json. Recomputes accuracy, ECE, NLL and the Brier score of every "
        "run that stored its predictions, beside the stored metric each recomputes; exits 1 if one differs by more than 1e-5.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_rescore)
    p = sub.add_parser("publish", help="write a self-contained static leaderboard site", description="Keys: out=DIR (default site), results=DIR. Open DIR/index.html from disk or any static host; no network needed.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_publish)
    p = sub.add_parser("bench", help="measure the speed targets side by side (medians and ratios)", description="Keys: only=engine,pipeline,sweep,cache,leaderboard,startup,store (default all), repeats=N (default 5), out=FILE.md, runs=N (the store benchmarks' stored runs, default 2000).")
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
    p.add_argument("suite", help="a suite that declares published numbers at scale=paper (Suite.reported; e.g. long_tail, ood)")
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
