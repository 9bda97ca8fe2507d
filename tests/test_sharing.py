"""`harness push` / `harness pull`: results and artifacts to and from fsspec locations (local folders,
memory://, and the Hugging Face hub through a recorded stand-in for its fsspec filesystem), checked
on the way in exactly as `harness collect` checks them."""

from __future__ import annotations

import json
import sys

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from harness.artifacts import artifact_id, cached_model
from harness.collect import collect
from harness.leaderboard import build_boards, render
from harness.predictions import encode
from harness.sharing import pull, pull_artifacts, push, push_artifacts
from harness.store import PREDICTIONS_FILE, ResultStore
from harness.testing import fake_record, run_cli

LT = {"version": "3", "variant": {"ratio": 100, "test_dist": "uniform"}}  # the installed long_tail card's version and axes


class FakeHubFileSystem(MemoryFileSystem):
    """Stands in for `huggingface_hub.HfFileSystem` (the hub cannot be reached here): paths
    `hf://datasets/ORG/REPO/...`, writes only inside an existing dataset repository, and every
    written file recorded as the commit the hub would make."""

    protocol = ("hf",)
    store: dict = {}
    pseudo_dirs: list = [""]
    repos: set = set()
    commits: list = []

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        path = path[len("hf://"):] if path.startswith("hf://") else path
        return "/" + path.strip("/") if path.strip("/") else ""

    def _check_repo(self, path):
        parts = self._strip_protocol(path).strip("/").split("/")
        if len(parts) < 4 or parts[0] != "datasets" or "/".join(parts[1:3]) not in self.repos:
            raise FileNotFoundError(f"Repository not found for {path}. Make sure the repository and revision exist before writing data.")

    def pipe_file(self, path, value, **kwargs):
        self._check_repo(path)
        self.commits.append(self._strip_protocol(path))
        return super().pipe_file(path, value, **kwargs)

    def put_file(self, lpath, rpath, **kwargs):
        self._check_repo(rpath)
        self.commits.append(self._strip_protocol(rpath))
        return super().put_file(lpath, rpath, **kwargs)

    def makedirs(self, path, exist_ok=False):  # the hub has no folders of its own
        pass


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(FakeHubFileSystem, "store", {})
    monkeypatch.setattr(FakeHubFileSystem, "pseudo_dirs", [""])
    monkeypatch.setattr(FakeHubFileSystem, "repos", {"org/results"})
    monkeypatch.setattr(FakeHubFileSystem, "commits", [])
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "hf", FakeHubFileSystem)  # what hf:// opens, for this test
    FakeHubFileSystem.clear_instance_cache()
    yield FakeHubFileSystem
    FakeHubFileSystem.clear_instance_cache()


def with_predictions(record, seed_offset=0, *, correct_share=0.7):
    """A record with per-sample predictions on 50 test samples of 10 classes."""
    g = torch.Generator().manual_seed(hash((record["run_id"], seed_offset)) % 2**31)
    labels = torch.arange(50) % 10
    logits = torch.randn(50, 10, generator=g)
    right = torch.rand(50, generator=g) < correct_share
    logits[right, labels[right]] += 5.0
    summary, data = encode({"test": (logits, labels)})
    return {**record, "predictions": summary}, data


def machine(root, entries, seeds, *, predictions=True, extra=()):
    """A results folder as one machine would leave it."""
    store = ResultStore(root)
    for entry, base in entries.items():
        for seed in seeds:
            record = fake_record(entry=entry, seed=seed, value=round(base + 0.01 * seed, 4), **LT)
            if predictions:
                record, data = with_predictions(record)
                store.write(record, predictions=data)
            else:
                store.write(record)
    for record in extra:
        store.write(record)
    store.sync()
    return root


def board_text(root, fmt="csv", **kwargs):
    con = ResultStore(root).connect(read_only=True)
    try:
        return render(build_boards(con, **kwargs), fmt)
    finally:
        con.close()


def predictions_rows(root):
    con = ResultStore(root).connect(read_only=True)
    try:
        return con.execute("SELECT run_id, split, idx, label, pred, confidence FROM predictions ORDER BY ALL").fetchall()
    finally:
        con.close()


@pytest.fixture
def two_machines(tmp_path):
    a = machine(tmp_path / "a", {"ce": 0.60, "focal": 0.70}, [0, 1], extra=[fake_record(entry="ldam", seed=0, status="failed", **LT)])
    b = machine(tmp_path / "b", {"ce": 0.60, "focal": 0.70, "ldam": 0.65}, [1, 2])  # seed 1 of ce/focal on both; ldam seed 0 failed on a only
    b_store = ResultStore(b)
    b_store.write(fake_record(entry="ldam", seed=0, value=0.66, **LT))  # succeeded on b where a failed
    b_store.sync()
    return a, b


@pytest.mark.parametrize("where", ["folder", "memory", "hub"])
def test_two_machines_pushed_to_one_place_and_pulled_give_the_leaderboard_of_both(two_machines, tmp_path, where, request):
    a, b = two_machines
    dest = {"folder": str(tmp_path / "shared"), "memory": f"memory://{tmp_path.name}/shared", "hub": "hf://datasets/org/results"}[where]
    if where == "hub":
        request.getfixturevalue("hub")
    first = push(a, dest)
    second = push(b, dest)
    assert first.pushed == 5 and first.with_predictions == 4
    assert second.pushed == 5 and second.already == 2  # ce and focal seed 1 were there; ldam seed 0 replaces a's failure
    assert push(b, dest).pushed == 0  # nothing new: nothing is sent again
    pulled = tmp_path / "pulled"
    report = pull(dest, pulled)
    assert not report.problems
    direct = tmp_path / "direct"
    collect([a, b], direct)
    for fmt in ("csv", "json", "table"):
        assert board_text(pulled, fmt) == board_text(direct, fmt)
    assert board_text(pulled, "csv", test="mcnemar") == board_text(direct, "csv", test="mcnemar")
    assert predictions_rows(pulled) == predictions_rows(direct) and len(predictions_rows(pulled)) == 8 * 50
    (board,) = build_boards(ResultStore(pulled).connect(read_only=True))
    ldam = next(e for e in board.entries if e.method == "ldam")
    assert ldam.ok == 3 and ldam.not_ok == 0  # the failed copy lost to the successful one
    focal = next(e for e in board.entries if e.method == "focal")
    assert focal.seed_disagreement is not None and focal.disagreement_pairs == 3  # seeds 0, 1, 2: three pairs


def test_the_hub_gets_few_commits_inside_its_repository_and_a_dataset_card(two_machines, hub):
    a, _ = two_machines
    report = push(a, "hf://datasets/org/results")
    commits = hub.commits
    assert len(commits) == len(report.files) <= 8
    assert all(c.startswith("/datasets/org/results/") for c in commits)
    card = hub().cat_file("hf://datasets/org/results/README.md").decode()
    assert card.startswith("---\nconfigs:\n- config_name: leaderboard\n  data_files: tables/leaderboard.parquet\n  default: true\n")
    assert "harness pull hf://datasets/org/results" in card and "| focal" in card
    import pandas as pd
    import pyarrow.parquet as pq

    board = pq.read_table(hub().open("hf://datasets/org/results/tables/leaderboard.parquet")).to_pandas()
    assert isinstance(board, pd.DataFrame) and set(board["method"]) == {"ce", "focal", "ldam"}
    assert board.loc[board["method"] == "focal", "top1_mean"].iloc[0] == pytest.approx(0.705)


def test_a_push_to_a_repository_that_does_not_exist_says_what_to_do(two_machines, hub):
    a, _ = two_machines
    code, _, err = run_cli("push", "hf://datasets/org/missing", f"results={a}")
    assert code == 2 and "repository" in err and "huggingface-cli repo create" in err and hub.commits == []


def test_hostile_records_at_a_location_are_refused_with_their_address_and_nothing_stored_changes(two_machines, tmp_path):
    a, _ = two_machines
    dest = f"memory://{tmp_path.name}/evil"
    push(a, dest)
    fs = fsspec.filesystem("memory")
    good = fake_record(entry="mixup", seed=7, value=0.5, **LT)
    tampered = fake_record(entry="mixup", seed=8, value=0.5, **LT)
    tampered["spec"]["seed"] = 9  # the spec no longer hashes to the run id
    stolen_row, _ = with_predictions(fake_record(entry="mixup", seed=9, value=0.5, **LT))
    lines = [json.dumps(good), json.dumps(tampered), '{"schema": 1, "run_id": NaN}', json.dumps(stolen_row), "\x00 not json"]
    fs.pipe_file(f"/{tmp_path.name}/evil/results/0123456789abcdef.jsonl", "\n".join(lines).encode())
    # a predictions table whose rows for the last record were changed after the fact
    victim, data = with_predictions(fake_record(entry="mixup", seed=9, value=0.5, **LT))
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.sharing import _bundle_schema

    table = pq.read_table(pa.BufferReader(data))
    table = table.set_column(3, "pred", pa.array([0] * table.num_rows, pa.int32()))  # every prediction rewritten
    table = table.add_column(0, "run_id", pa.array([victim["run_id"]] * table.num_rows, pa.string())).cast(_bundle_schema())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fs.pipe_file(f"/{tmp_path.name}/evil/results/0123456789abcdef.predictions.parquet", sink.getvalue().to_pybytes())

    local = machine(tmp_path / "mine", {"ce": 0.5}, [0])
    before = {p: p.read_bytes() for p in (local / "runs").rglob("*") if p.is_file() and not p.name.startswith(".")}
    code, out, err = run_cli("pull", dest, f"results={local}")
    assert code == 0, err
    where = f"memory://{tmp_path.name}/evil/results/0123456789abcdef.jsonl"
    assert f"line 2 of {where}: run id" in err and "does not match the hash of its spec" in err
    assert f"line 3 of {where}: unreadable JSON" in err and "NaN is not a number JSON allows" in err
    assert f"line 4 of {where}" in err and "do not match the digest" in err and "is not pulled" in err
    assert f"line 5 of {where}: unreadable JSON" in err
    after = {p: p.read_bytes() for p in before}
    assert after == before  # what was stored is untouched
    store = ResultStore(local)
    held = store.done_ids()
    assert good["run_id"] in held and tampered["run_id"] not in held and victim["run_id"] not in held
    assert "refused" in out


def test_a_pulled_run_that_lost_its_predictions_file_is_stored_without_them_and_said_so(tmp_path):
    a = machine(tmp_path / "a", {"ce": 0.6}, [0])
    (run_dir,) = [p for p in (a / "runs").iterdir() if p.is_dir()]
    (run_dir / PREDICTIONS_FILE).unlink()
    report = collect([a], tmp_path / "b")
    assert report.copied == 1 and any("without its per-sample predictions" in n for n in report.notes)
    (record,) = ResultStore(tmp_path / "b").scan()[0].values()
    assert "predictions" not in record


def test_pull_of_a_place_with_nothing_says_so(tmp_path):
    code, _, err = run_cli("pull", f"memory://{tmp_path.name}/empty", f"results={tmp_path / 'r'}")
    assert code == 2 and "holds no harness results" in err


# ---------------------------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------------------------


def make_artifact(cache):
    key = {"role": "ood-source", "suite": "ood", "seed": 0, "data": "abc"}
    torch.manual_seed(0)
    model, _ = cached_model(cache, key, lambda: torch.nn.Linear(4, 3), lambda m: {"acc": 0.9})
    return artifact_id(key), key, model


def test_an_artifact_travels_by_id_and_is_verified_before_use(tmp_path, hub):
    aid, key, model = make_artifact(tmp_path / "cache-a")
    dest = "hf://datasets/org/results"
    pushed = push_artifacts(tmp_path / "cache-a", dest, ["all"])
    assert pushed.done == [aid]
    assert push_artifacts(tmp_path / "cache-a", dest, [aid]).present == [aid]
    pulled = pull_artifacts(dest, tmp_path / "cache-b", [aid])
    assert pulled.done == [aid] and not pulled.refused
    # the second user's run finds the same source model under the same key: loaded, not trained again
    trained = []
    again, facts = cached_model(tmp_path / "cache-b", key, lambda: torch.nn.Linear(4, 3), lambda m: trained.append(1) or {})
    assert facts["reused"] and not trained and facts["acc"] == 0.9
    assert torch.equal(again.weight, model.weight)


def test_a_tampered_artifact_is_refused_with_the_reason(tmp_path, hub):
    aid, _, _ = make_artifact(tmp_path / "cache-a")
    dest = "hf://datasets/org/results"
    push_artifacts(tmp_path / "cache-a", dest, [aid])
    fs = hub()
    weights = f"hf://datasets/org/results/artifacts/{aid}.safetensors"
    original = fs.cat_file(weights)
    fs.pipe_file(weights, original[:-4] + b"\x00\x00\x00\x00")
    code, _, err = run_cli("pull", dest, f"artifacts={aid}", f"cache={tmp_path / 'cache-b'}")
    assert code == 2 and "SHA-256 of its weights" in err
    assert not (tmp_path / "cache-b" / "artifacts" / f"{aid}.safetensors").exists()
    fs.pipe_file(weights, original)
    card_path = f"hf://datasets/org/results/artifacts/{aid}.json"
    card = json.loads(fs.cat_file(card_path))
    card["key"]["seed"] = 1  # a card claiming another model's key under this id
    fs.pipe_file(card_path, json.dumps(card).encode())
    code, _, err = run_cli("pull", dest, f"artifacts={aid}", f"cache={tmp_path / 'cache-b'}")
    assert code == 2 and f"not {aid}" in err and "not the model that id names" in err
    assert not list((tmp_path / "cache-b" / "artifacts").glob("*.safetensors"))
