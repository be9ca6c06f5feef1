// llamabrew chat page: plain JS, no build step. Talks to the same OpenAI-compatible /v1 API as any client,
// streaming answers over server-sent events read with fetch + ReadableStream. Text is only ever set with
// textContent, so nothing a model writes can become markup.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["system", "temperature", "top_p", "max_tokens", "api_key", "model"];
const state = { history: [], controller: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
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

async function loadModels() {
  const select = $("model");
  const wanted = select.value || localStorage.getItem("llamabrew.model");
  let response;
  try {
    response = await fetch("v1/models", { headers: headers() });
  } catch (err) {
    setStatus("cannot reach the server: " + err.message, true);
    return;
  }
  if (!response.ok) {
    const message = await errorText(response);
    if (response.status === 401) {
      toggleSettings(true);
      $("api_key").focus();
      setStatus("This server needs an API key: enter it in Settings.", true);
    } else {
      setStatus(message, true);
    }
    return;
  }
  const models = (await response.json()).data;
  select.replaceChildren(...models.map((m) => Object.assign(new Option(m.id, m.id), {
    title: m.parent ? `adapter on ${m.parent}` : "base model",
  })));
  if (wanted && models.some((m) => m.id === wanted)) select.value = wanted;
  setStatus(`${models.length} model${models.length === 1 ? "" : "s"} available`);
}

function addMessage(role, text) {
  $("empty").hidden = true;
  const box = document.createElement("div");
  box.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "you" : $("model").value;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  box.append(label, content);
  $("log").append(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

// Yields the data of each server-sent event as it arrives.
async function* sseEvents(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("model").disabled = on;
}

function number(id, integer = false) {
  const v = integer ? parseInt($(id).value, 10) : parseFloat($(id).value);
  return Number.isFinite(v) ? v : undefined;
}

async function send(question) {
  const system = $("system").value.trim();
  state.history.push({ role: "user", content: question });
  addMessage("user", question);
  const bubble = addMessage("assistant", "");
  const content = bubble.querySelector(".content");
  bubble.dataset.state = "streaming";
  const body = {
    model: $("model").value || undefined,
    messages: (system ? [{ role: "system", content: system }] : []).concat(state.history),
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature"),
    top_p: number("top_p"),
    max_tokens: number("max_tokens", true),
  };
  const controller = (state.controller = new AbortController());
  busy(true);
  setStatus("waiting for the model…");
  const sent = performance.now();
  let text = "", usage = null, finish = null, started = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const data of sseEvents(response.body)) {
      if (data === "[DONE]") break;
      if (started === null) started = performance.now(); // the first event comes when generation begins
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      const choice = event.choices && event.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        text += choice.delta.content;
        content.textContent = text;
        bubble.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    bubble.dataset.state = "done";
    const tokens = usage ? usage.completion_tokens : 0;
    const seconds = (performance.now() - (started === null ? sent : started)) / 1000;
    const rate = seconds > 0 ? tokens / seconds : 0;
    const meta = `${tokens} tokens · ${rate.toFixed(1)} tok/s${finish === "length" ? " · cut at max tokens" : ""}`;
    setStatus(meta);
    const line = document.createElement("div");
    line.className = "meta";
    line.textContent = meta;
    bubble.append(line);
  } catch (err) {
    if (err.name === "AbortError") {
      bubble.dataset.state = "stopped";
      setStatus("stopped");
    } else {
      bubble.dataset.state = "error";
      content.textContent = (text ? text + "\n\n" : "") + "error: " + err.message;
      setStatus(err.message, true);
    }
  } finally {
    if (text) state.history.push({ role: "assistant", content: text });
    else state.history.pop(); // nothing came back: asking again should not repeat the question
    if (state.controller === controller) state.controller = null;
    busy(false);
  }
}

function toggleSettings(open) {
  const panel = $("settings");
  panel.hidden = open === undefined ? !panel.hidden : !open;
  $("settings-toggle").setAttribute("aria-expanded", String(!panel.hidden));
}

function clearChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("log").querySelectorAll(".msg").forEach((m) => m.remove());
  $("empty").hidden = false;
  setStatus("");
}

function init() {
  for (const id of SETTINGS) {
    const saved = localStorage.getItem("llamabrew." + id);
    if (saved !== null && id !== "model") $(id).value = saved;
    $(id).addEventListener("change", () => localStorage.setItem("llamabrew." + id, $(id).value));
  }
  $("api_key").addEventListener("change", loadModels);
  $("settings-toggle").addEventListener("click", () => toggleSettings());
  $("settings").addEventListener("submit", (e) => e.preventDefault());
  $("clear").addEventListener("click", clearChat);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const question = $("prompt").value.trim();
    if (!question || state.controller) return;
    $("prompt").value = "";
    send(question);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  loadModels();
}

init();
