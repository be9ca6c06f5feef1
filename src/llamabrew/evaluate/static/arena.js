// llamabrew arena pages (vote at /, results at /results): plain JS, no build step, no inline script (the pages
// run under a strict CSP). Text is only ever set with textContent, so nothing a model writes becomes markup.
// The vote page learns the models' names only from the reply to its vote.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "llamabrew.api_key"; // the chat page's key name: one key per origin
const RATER = "llamabrew.rater";
const state = { item: null, busy: false };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

// The parsed JSON of an /api call, or null after telling the user what went wrong.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers() });
  } catch (err) {
    setStatus("cannot reach the server: " + err.message, true);
    return null;
  }
  if (response.status === 401) {
    $("key-form").hidden = false;
    $("api_key").focus();
    setStatus("This arena needs an API key: enter it above.", true);
    return null;
  }
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return null;
  }
  return response.json();
}

function bubble(role, text, last = false) {
  const box = document.createElement("div");
  box.className = `bubble ${role}${last ? " judged" : ""}`;
  box.textContent = text;
  return box;
}

function showSide(id, side, turn) {
  const box = $(id).querySelector(".conversation");
  // Turn 1: the question is shown once above both answers. Later turns: each model's own conversation.
  const shown = turn > 1 ? side.messages.map((m) => bubble(m.role, m.content)) : [];
  box.replaceChildren(...shown, bubble("assistant", side.answer, true));
}

function votingOn(on) {
  document.querySelectorAll(".vote").forEach((b) => { b.disabled = !on; });
}

async function loadNext() {
  if (state.busy) return;
  state.busy = true;
  votingOn(false);
  $("reveal").hidden = true;
  for (const id of ["reveal-text", "left-name", "right-name"]) $(id).textContent = ""; // blind again
  $("item").dataset.state = "loading";
  setStatus("loading…");
  const rater = $("rater").value.trim();
  const item = await api("api/next?rater=" + encodeURIComponent(rater));
  state.busy = false;
  if (!item) return;
  state.item = item;
  $("question").hidden = item.turn > 1;
  $("second-turn").hidden = item.turn === 1;
  $("question").textContent = item.turn === 1 ? item.left.messages[0].content : "";
  showSide("left", item.left, item.turn);
  showSide("right", item.right, item.turn);
  $("item").dataset.state = "voting";
  votingOn(true);
  setStatus(`question ${item.question_id}${item.category ? " · " + item.category : ""} · turn ${item.turn}`);
}

async function vote(choice) {
  if (!state.item || state.busy) return;
  state.busy = true;
  votingOn(false);
  const body = { token: state.item.token, vote: choice, rater: $("rater").value.trim() };
  const result = await api("api/vote", { method: "POST", body: JSON.stringify(body) });
  state.busy = false;
  if (!result) {
    votingOn(true);
    return;
  }
  state.item = null;
  $("left-name").textContent = "· " + result.left;
  $("right-name").textContent = "· " + result.right;
  const said = { a: "A is better", b: "B is better", tie: "a tie", both_bad: "both bad" }[result.vote];
  $("reveal-text").textContent = `You voted ${said}. A was ${result.left}, B was ${result.right}.`;
  $("reveal").hidden = false;
  $("item").dataset.state = "revealed";
  setStatus(`${result.votes} vote${result.votes === 1 ? "" : "s"} so far — thank you`);
  $("next").focus();
}

function percent(x) {
  return (100 * x).toFixed(1) + "%";
}

async function loadResults() {
  const results = await api("api/results");
  if (!results) return;
  $("method").textContent = `${results.votes} votes. Win rate counts a tie or "both bad" as half a win; ` +
    `interval: ${results.method}.`;
  const rows = results.pairs.map((p) => {
    const tr = document.createElement("tr");
    const cells = [p.model, p.opponent, p.votes, p.wins, p.losses, p.ties, p.both_bad,
      percent(p.win_rate_adjusted), `${percent(p.ci_low)} – ${percent(p.ci_high)}`];
    tr.replaceChildren(...cells.map((c) => Object.assign(document.createElement("td"), { textContent: String(c) })));
    return tr;
  });
  document.querySelector("#results tbody").replaceChildren(...rows);
  setStatus(results.pairs.length ? "" : "no votes yet");
}

function init() {
  const page = document.body.dataset.page;
  const reload = page === "vote" ? loadNext : loadResults;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(KEY, $("api_key").value.trim());
    $("key-form").hidden = true;
    reload();
  });
  if (page === "vote") {
    $("rater").value = localStorage.getItem(RATER) || "";
    $("rater").addEventListener("change", () => localStorage.setItem(RATER, $("rater").value.trim()));
    document.querySelectorAll(".vote").forEach((b) => b.addEventListener("click", () => vote(b.dataset.vote)));
    $("next").addEventListener("click", loadNext);
  }
  reload();
}

init();
