"""The blind A/B arena's pages in headless Chromium (Debian's `chromium` driven by Playwright, under the page's
own CSP): blindness until the vote, an open page surviving a restart, two raters at once, the results page and the
API-key prompt."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import httpx
import pytest
from arena_setup import ALPHA, ANSWERS, BETA, ITEMS, NAMES, QUESTION_TEXT, QUESTIONS, make_app
from fastapi.testclient import TestClient

from llamabrew.evaluate.votes import Item, VoteStore
from llamabrew.serve.server import run_in_thread

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def serve_on(app, port: int = 0):
    """`run_in_thread` on a port a restarted server can bind again at once."""
    return run_in_thread(app, port=port, reuse_address=True)


def wait_for_item(page) -> dict:
    expect(page.locator("#item")).to_have_attribute("data-state", "voting")
    return page.evaluate("state.item")


def assert_blind(bodies: list[tuple[str, bytes]], *texts: str) -> None:
    for where, body in [*bodies, *((f"text {i}", t.encode()) for i, t in enumerate(texts))]:
        for name in NAMES:
            assert name.encode() not in body.lower(), f"{name!r} in {where}"


def bodies_of(responses: list) -> list[tuple[str, bytes]]:
    """Every body the browser received; a 304 (a reload's revalidation) reuses one it received before."""
    assert all(r.status == 304 or r.status < 300 for r in responses), [(r.url, r.status) for r in responses]
    return [(r.url, r.body() if r.status != 304 else b"") for r in responses]


def judged(page, side: str) -> list[str]:
    return page.locator(f"#{side} .bubble").all_text_contents()


def test_vote_flow_is_blind_until_the_vote_then_reveals(context, arena) -> None:
    """Load, vote, see who was who, next: every item once (fewest votes first), never one twice in a row, and
    nothing any response carried before a vote (page, script, style, API) names a model."""
    with run_in_thread(make_app(arena, seed=1)) as url:
        page = context.new_page()
        responses: list = []
        page.on("response", lambda r: responses.append(r))
        page.goto(url)
        wait_for_item(page)
        page.fill("#rater", "ana")
        page.dispatch_event("#rater", "change")
        first_load = bodies_of(responses)  # read before the reload: a body is gone once navigated away from
        assert {u.rsplit("/", 1)[-1] for u, _ in first_load} >= {"", "arena.js", "arena.css", "next?rater="}
        responses.clear()
        page.reload()  # the name is kept (localStorage)
        assert page.input_value("#rater") == "ana"
        seen, lefts = [], []
        for n, choice in enumerate(["a", "b", "tie", "both_bad"]):
            item = wait_for_item(page)
            assert_blind(bodies_of(responses) + (first_load if n == 0 else []), page.content())
            left, right = judged(page, "left"), judged(page, "right")
            page.click(f"#vote-{choice}")
            expect(page.locator("#reveal")).to_be_visible()
            vote = responses[-1].json()
            assert responses[-1].url.endswith("/api/vote") and vote["vote"] == choice
            assert {vote["left"], vote["right"]} == {ALPHA, BETA}
            reveal = page.text_content("#reveal-text")
            assert f"A was {vote['left']}, B was {vote['right']}" in reveal
            assert page.text_content("#left-name").endswith(vote["left"])
            qid, turn = item["question_id"], item["turn"]
            # what the page showed on each side is what the revealed model answered, in its own conversation
            assert left[-1] == ANSWERS[vote["left"]][qid][turn - 1] and right[-1] == ANSWERS[vote["right"]][qid][
                turn - 1]
            if turn == 2:
                q = QUESTIONS[1]["turns"]
                assert left == [q[0], ANSWERS[vote["left"]][2][0], q[1], ANSWERS[vote["left"]][2][1]]
                assert right == [q[0], ANSWERS[vote["right"]][2][0], q[1], ANSWERS[vote["right"]][2][1]]
                assert page.is_visible("#second-turn") and not page.is_visible("#question")
            else:
                assert page.text_content("#question") == QUESTION_TEXT[str(qid)][0]
            lefts.append(vote["left"])
            seen.append((str(qid), turn))
            if n == 1:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "arena_reveal.png"), full_page=True)
            responses.clear()
            page.click("#next")
        wait_for_item(page)
        assert set(seen) == ITEMS and len(seen) == 4  # four votes spread over four items
        assert set(lefts) == {ALPHA, BETA}  # the sides were shuffled
        games = make_app(arena).state.store.games()
        assert [(str(g.question_id), g.turn) for g in games] == seen and {g.rater for g in games} == {"ana"}
        assert [g.winner for g in games] == ["a", "b", "tie", "tie"]  # both bad is a tie for the leaderboard
        assert [g.model_a for g in games] == lefts and all(g.source == "human" for g in games)
        assert all({g.model_a, g.model_b} == {ALPHA, BETA} for g in games)
        assert_blind([(url, httpx.get(url + p).content) for p in ("/", "/results", "/static/arena.js",
                                                                  "/static/arena.css")])


def test_restart_keeps_votes_an_open_page_still_votes_and_a_used_token_is_refused(context, arena) -> None:
    first = make_app(arena, seed=2)
    with serve_on(first) as url:
        page = context.new_page()
        page.goto(url)
        open_item = wait_for_item(page)
        token = httpx.get(url + "/api/next", params={"rater": "ben"}).json()["token"]
        assert httpx.post(url + "/api/vote", json={"token": token, "vote": "a", "rater": "ben"}).status_code == 200
    port = int(url.rsplit(":", 1)[1])
    with serve_on(make_app(arena, seed=3), port) as again:  # a new server, same database, same address
        page.click("#vote-b")  # the page was opened on the old server
        expect(page.locator("#reveal")).to_be_visible()
        assert page.text_content("#status").startswith("2 votes")
        used = httpx.post(again + "/api/vote", json={"token": token, "vote": "b", "rater": "ben"})
        assert used.status_code == 409 and used.json()["error"]["code"] == "already_voted"
        store = VoteStore(arena.db)
        assert store.count() == 2 and [g.winner for g in store.games()] == ["a", "b"]
        assert (store.games()[1].question_id, store.games()[1].turn) == (open_item["question_id"],
                                                                        open_item["turn"])
        results = context.new_page()
        results.goto(again + "/results")
        expect(results.locator("#results tbody tr")).to_have_count(1)
        assert results.locator("#results tbody td").nth(2).text_content() == "2"
        assert results.text_content("#method").startswith("2 votes")
    with sqlite_db(arena.db) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@contextlib.contextmanager
def sqlite_db(path: Path):
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        yield db


def test_two_raters_vote_at_once(browser, arena) -> None:
    with run_in_thread(make_app(arena)) as url:
        pages = []
        for name in ("ana", "ben"):
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(url)
            page.fill("#rater", name)
            page.dispatch_event("#rater", "change")
            pages.append(page)
        for _ in range(3):
            for page in pages:
                wait_for_item(page)
            for page in pages:  # both votes in flight together
                page.click("#vote-a", no_wait_after=True)
            for page in pages:
                expect(page.locator("#reveal")).to_be_visible()
                page.click("#next")

        def rater(name: str) -> None:
            with httpx.Client(base_url=url) as client:
                for _ in range(10):
                    token = client.get("/api/next", params={"rater": name}).json()["token"]
                    assert client.post("/api/vote", json={"token": token, "vote": "tie", "rater": name}).is_success

        threads = [threading.Thread(target=rater, args=(n,)) for n in ("cy", "di")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for page in pages:
            page.context.close()
    games = VoteStore(arena.db).games()
    by_rater = {n: [(str(g.question_id), g.turn) for g in games if g.rater == n] for n in ("ana", "ben", "cy", "di")}
    assert {n: len(v) for n, v in by_rater.items()} == {"ana": 3, "ben": 3, "cy": 10, "di": 10}
    for name, seq in by_rater.items():  # never the same item twice in a row to one rater
        assert all(x != y for x, y in zip(seq, seq[1:], strict=False)), (name, seq)


def test_results_page_numbers(context, arena) -> None:
    """3 wins, 1 loss, 1 tie and 1 both-bad for model-alpha: adjusted win rate (3 + 2/2) / 6."""
    store = VoteStore(arena.db)
    items, models = [Item(1, 1, "writing"), Item(2, 1, "math")], (ALPHA, BETA)
    for outcome in ["alpha", "alpha", "beta", "tie", "alpha", "both_bad"]:
        shown = store.show(items, models, "")
        winner = {"alpha": ALPHA, "beta": BETA}.get(outcome)
        store.vote(shown.token, outcome if winner is None else ("a" if shown.left == winner else "b"), "")
    (row,) = store.summary()
    assert (row["model"], row["opponent"], row["votes"], row["wins"], row["losses"], row["ties"],
            row["both_bad"]) == (ALPHA, BETA, 6, 3, 1, 1, 1)
    assert row["win_rate_adjusted"] == pytest.approx(4 / 6) and row["win_rate"] == pytest.approx(3 / 6)
    # scores 1,1,1,0,½,½: mean ⅔, standard error 0.15, so about ⅔ ± 0.3; capped at 1
    assert 0.3 < row["ci_low"] < 0.5 and 0.85 < row["ci_high"] <= 1.0
    assert store.summary() == [row]  # a fixed seed: the same interval every time
    with run_in_thread(make_app(arena)) as url:
        page = context.new_page()
        page.goto(url + "/results")
        expect(page.locator("#results tbody tr")).to_have_count(1)
        cells = page.locator("#results tbody td").all_text_contents()
        assert cells[:8] == [ALPHA, BETA, "6", "3", "1", "1", "1", "66.7%"]
        assert cells[8] == f"{100 * row['ci_low']:.1f}% – {100 * row['ci_high']:.1f}%"
        assert "bootstrap" in page.text_content("#method") and "half a win" in page.text_content("#method")


def test_api_key_is_required_when_set(context, arena) -> None:
    app = make_app(arena, api_key="let-me-in")
    client = TestClient(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "let-me-in"}):
        r = client.get("/api/next", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.post("/api/vote", json={"token": "x", "vote": "a"}).status_code == 401
    assert client.get("/api/results").status_code == 401
    assert client.get("/api/next", headers={"Authorization": "Bearer let-me-in"}).status_code == 200
    with run_in_thread(app) as url:
        page = context.new_page()
        page.goto(url)
        expect(page.locator("#status")).to_contain_text("needs an API key")
        page.fill("#api_key", "let-me-in")
        page.click("#key-form button")
        wait_for_item(page)
        assert page.is_hidden("#key-form")
        page.click("#vote-tie")
        expect(page.locator("#reveal")).to_be_visible()
