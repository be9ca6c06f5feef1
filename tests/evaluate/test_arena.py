"""The arena without a browser: votes that survive a kill, the order items are served in, preference-pair export,
the CLI's host check and request validation."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from arena_setup import ALPHA, ANSWERS, BETA, make_app
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from llamabrew.evaluate.arena_cli import arena_app
from llamabrew.evaluate.votes import Item, VoteStore

KILLED_MID_VOTE = """
import os, signal, sys, types
from llamabrew.evaluate import votes
store = votes.VoteStore(sys.argv[1])
items, models = [votes.Item(1, 1)], ("model-alpha", "model-beta")
store.vote(store.show(items, models, "ana").token, "a", "ana")
second = store.show(items, models, "ana")
print(second.token, flush=True)
votes.time = types.SimpleNamespace(time=lambda: os.kill(os.getpid(), signal.SIGKILL))  # dies inside the vote
store.vote(second.token, "b", "ana")
"""


def test_a_server_killed_mid_vote_loses_no_committed_vote(arena) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_VOTE, str(arena.db)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = VoteStore(arena.db)
    assert [g.winner for g in store.games()] == ["a"]  # the committed vote; none of the one in flight
    store.vote(proc.stdout.strip(), "tie", "ana")  # its item can still be voted: no half-written vote, no lock
    assert store.count() == 2


def test_items_go_fewest_votes_first_but_never_twice_in_a_row_to_a_rater(arena) -> None:
    store = VoteStore(arena.db)
    crowded, empty = Item(1, 1), Item(2, 1)
    models = (ALPHA, BETA)
    for _ in range(5):
        store.vote(store.show([crowded], models, "others").token, "tie", "others")
    order = []
    for _ in range(6):  # `empty` has the fewest votes throughout, yet ana gets the two in turn
        shown = store.show([crowded, empty], models, "ana")
        store.vote(shown.token, "a", "ana")
        order.append(shown.item)
    assert order == [empty, crowded] * 3
    assert store.show([crowded, empty], models, "ben").item == empty  # another rater: the fewest votes
    assert store.show([crowded], models, "ana").item == crowded  # one item only: it, again


def test_export_writes_the_winners_answer_as_chosen_and_skips_ties_and_second_turns(arena) -> None:
    client = TestClient(make_app(arena, seed=5))
    expected, skipped, lefts = [], {"tie": 0, "both bad": 0, "second turn": 0}, set()
    for n in range(12):
        item = client.get("/api/next", params={"rater": f"r{n % 3}"}).json()
        choice = "a" if item["turn"] == 2 else ["a", "b", "tie", "both_bad", "b", "a"][n % 6]
        reveal = client.post("/api/vote", json={"token": item["token"], "vote": choice}).json()
        qid = item["question_id"]
        if item["turn"] == 2:
            skipped["second turn"] += 1
        elif choice in ("tie", "both_bad"):
            skipped["tie" if choice == "tie" else "both bad"] += 1
        else:
            winner = reveal["winner"]
            loser = ({ALPHA, BETA} - {winner}).pop()
            lefts.add((reveal["left"], winner == reveal["left"]))
            expected.append({"prompt": item["left"]["messages"][0]["content"], "chosen": ANSWERS[winner][qid][0],
                             "rejected": ANSWERS[loser][qid][0]})
    assert len(lefts) >= 3 and all(skipped.values())  # winners on both sides, each model on the left
    out = arena.dir / "out" / "pairs.jsonl"
    result = CliRunner().invoke(arena_app, ["export", "--db", str(arena.db), "--questions", str(arena.questions_file),
                                            "--a", str(arena.files[ALPHA]), "--b", str(arena.files[BETA]),
                                            "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    (line,) = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert f"wrote {len(expected)} preference pairs" in line and f"skipped {sum(skipped.values())}" in line
    assert f"{skipped['tie']} tie" in line and f"{skipped['second turn']} second turn" in line
    assert sorted(p.name for p in out.parent.iterdir()) == ["pairs.jsonl"]  # written atomically: no temp left


def test_cli_refuses_a_non_local_host_without_a_key(arena) -> None:
    files = ["--questions", str(arena.questions_file), "--a", str(arena.files[ALPHA]), "--b", str(arena.files[BETA])]
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        result = CliRunner().invoke(arena_app, [*files, "--host", host], env={"COLUMNS": "200",
                                                                             "LLAMABREW_API_KEY": ""})
        assert result.exit_code == 2, result.output
        (line,) = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert f"--host {host}" in line and "--api-key" in line and "Traceback" not in result.output
    assert not arena.db.exists()
    same = CliRunner().invoke(arena_app, [*files[:4], "--b", str(arena.files[ALPHA])])
    assert same.exit_code == 2 and "both answers of model 'model-alpha'" in same.stderr


def test_bad_vote_payloads_are_json_errors(arena) -> None:
    client = TestClient(make_app(arena))
    token = client.get("/api/next").json()["token"]
    bad = [{"token": token, "vote": "c"}, {"token": token, "vote": "a", "rater": "x" * 65},
           {"token": token, "vote": 1}, {"token": token}, {"token": token, "vote": "a", "model": ALPHA}, [token]]
    for body in bad:
        r = client.post("/api/vote", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", (body, r.text)
    r = client.post("/api/vote", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    assert client.get("/api/next", params={"rater": "y" * 65}).status_code == 422
    for unknown in ("no-such-token", "../../votes.sqlite"):
        r = client.post("/api/vote", json={"token": unknown, "vote": "a"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_token"
    assert client.post("/api/vote", json={"token": token, "vote": "a", "rater": "x" * 64}).status_code == 200
    assert VoteStore(arena.db).count() == 1  # only the good one
    files = {p.name for p in arena.dir.iterdir()} - {"votes.sqlite-wal", "votes.sqlite-shm"}
    assert files == {"questions.jsonl", f"{ALPHA}.jsonl", f"{BETA}.jsonl", "votes.sqlite"}  # no path from a request
