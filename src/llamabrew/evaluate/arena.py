"""The blind A/B arena: a web page where people vote which of two models' answers is better.

Nothing the page receives names a model until its vote is in: an item is sent as a random token with the two
answers on random sides, and only the vote's reply says who was who. The left/right mapping stays in the vote
database (`votes.VoteStore`), so a restart breaks no open page. Every /api request needs ``Authorization: Bearer
KEY`` when the arena has a key; the pages (plain HTML + one script, under a strict CSP) ask for it once.
"""

from __future__ import annotations

import hmac
import random
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.questions import Answer, Question, conversation
from llamabrew.evaluate.votes import CI_METHOD, Item, Shown, VoteError, VoteStore

STATIC = resources.files("llamabrew.evaluate") / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
MAX_RATER = 64


class ArenaError(Exception):
    """An error answered as ``{"error": {"message", "code"}}``."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "code": self.code}}, status_code=self.status)


class VoteIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    token: str = Field(min_length=1, max_length=64)
    vote: Literal["a", "b", "tie", "both_bad"]  # a: the left answer is better, b: the right one
    rater: str = Field("", max_length=MAX_RATER)


def arena_items(questions: list[Question], first: dict[int | str, Answer],
                second: dict[int | str, Answer]) -> list[Item]:
    """Every (question, turn) both models answered."""
    return [Item(q.question_id, turn + 1, q.category) for q in questions
            if q.question_id in first and q.question_id in second
            for turn in range(len(q.turns))
            if turn < len(first[q.question_id].turns) and turn < len(second[q.question_id].turns)]


def create_arena_app(questions: list[Question], answers: dict[str, dict[int | str, Answer]],
                     db_path: str | Path, api_key: str | None = None, *, seed: int | None = None) -> FastAPI:
    """The arena: the vote page at /, results at /results, the JSON API under /api. ``answers`` holds two
    models' answers by model id; ``seed`` fixes the order and sides of items (tests)."""
    if len(answers) != 2:
        raise LlamabrewError(f"the arena compares two models; got answers of {len(answers)}: "
                             f"{', '.join(answers) or 'none'}")
    models: tuple[str, str] = tuple(answers)  # type: ignore[assignment]
    items = arena_items(questions, answers[models[0]], answers[models[1]])
    if not items:
        raise LlamabrewError(f"no question has answers from both {models[0]} and {models[1]}")
    by_id = {q.question_id: q for q in questions}
    store = VoteStore(db_path, random.Random(seed))
    expected = api_key.encode() if api_key else None

    def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if expected is not None and not (hmac.compare_digest(given.strip().encode(), expected)
                                         and scheme.lower() == "bearer"):
            raise ArenaError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                             "invalid_api_key")

    app = FastAPI(title="llamabrew arena", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.models = store, models
    api = APIRouter(prefix="/api", dependencies=[Depends(authorize)])
    app.add_exception_handler(ArenaError, lambda _r, e: e.response())  # type: ignore[arg-type,return-value]

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return ArenaError(422, f"{where}: {first.get('msg', 'invalid')}", "invalid_request").response()

    @app.exception_handler(HTTPException)
    async def http_error(_r: Request, e: HTTPException) -> JSONResponse:
        return ArenaError(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error"
                          ).response()

    def side(model: str, item: Item) -> dict[str, Any]:
        """One model's conversation up to the asked turn (its own earlier answers), and its answer to it."""
        turns = answers[model][item.question_id].turns
        return {"messages": conversation(by_id[item.question_id], turns, item.turn - 1),
                "answer": turns[item.turn - 1]}

    def blind(shown: Shown) -> dict[str, Any]:
        item = shown.item
        return {"token": shown.token, "question_id": item.question_id, "turn": item.turn,
                "category": item.category, "left": side(shown.left, item), "right": side(shown.right, item)}

    @api.get("/next")
    def next_item(rater: Annotated[str, Query(max_length=MAX_RATER)] = "") -> dict[str, Any]:
        return blind(store.show(items, models, rater.strip()))

    @api.post("/vote")
    def vote(body: VoteIn) -> dict[str, Any]:
        try:
            shown = store.vote(body.token, body.vote, body.rater.strip())
        except VoteError as e:
            raise ArenaError(e.status, str(e), e.code) from None
        winner = {"a": shown.left, "b": shown.right}.get(body.vote)
        return {"vote": body.vote, "left": shown.left, "right": shown.right, "winner": winner,
                "votes": store.count()}

    @api.get("/results")
    def results() -> dict[str, Any]:
        return {"method": CI_METHOD, "votes": store.count(), "pairs": store.summary()}

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "arena.html"), headers=PAGE_HEADERS)

    @app.get("/results", include_in_schema=False)
    def results_page() -> FileResponse:
        return FileResponse(str(STATIC / "results.html"), headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
