// The chat page: talks to this server's own /v1/chat/completions and streams the reply.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, mode: "instruction", history: [], controller: null };

function sessionKey() {
  return sessionStorage.getItem("alpaca-api-key") || "";
}

async function loadInfo() {
  try {
    const response = await fetch("/info");
    const info = await response.json();
    state.model = info.model;
    $("model-name").textContent = info.model + (info.prompt_format ? ` · ${info.prompt_format} prompts` : "");
    $("status-dot").className = "dot " + (info.ready ? "ok" : "");
    $("api-key-field").hidden = !info.auth;
    $("max-tokens").max = info.max_new_tokens;
    if (!info.ready) setTimeout(loadInfo, 2000);
  } catch (error) {
    $("model-name").textContent = "server unreachable";
    $("status-dot").className = "dot bad";
    setTimeout(loadInfo, 3000);
  }
}

function setMode(mode) {
  state.mode = mode;
  for (const name of ["instruction", "chat"]) {
    const tab = $("mode-" + name);
    tab.classList.toggle("active", name === mode);
    tab.setAttribute("aria-selected", String(name === mode));
  }
  $("instruction-fields").hidden = mode !== "instruction";
  $("chat-fields").hidden = mode !== "chat";
  clearTranscript();
}

function clearTranscript() {
  state.history = [];
  for (const node of [...$("transcript").querySelectorAll(".turn")]) node.remove();
  $("empty").hidden = false;
  $("usage").textContent = "";
}

function addTurn(role, text, fields = []) {
  $("empty").hidden = true;
  const turn = document.createElement("div");
  turn.className = `turn ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : state.model || "model";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  turn.append(who, body);
  for (const [label, value] of fields) {
    const field = document.createElement("div");
    field.className = "field";
    field.textContent = `${label}: ${value}`;
    turn.append(field);
  }
  $("transcript").append(turn);
  turn.scrollIntoView({ block: "end" });
  return turn;
}

function buildMessages() {
  if (state.mode === "instruction") {
    const instruction = $("instruction").value.trim();
    const input = $("input").value.trim();
    if (!instruction) return null;
    // The input travels as a user message named "input": the server puts it where the
    // model's prompt template expects it.
    const messages = [{ role: "user", content: instruction }];
    if (input) messages.push({ role: "user", name: "input", content: input });
    addTurn("user", instruction, input ? [["Input", input]] : []);
    return messages;
  }
  const message = $("message").value.trim();
  if (!message) return null;
  state.history.push({ role: "user", content: message });
  addTurn("user", message);
  $("message").value = "";
  return [...state.history];
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function send(event) {
  event.preventDefault();
  if (state.controller) return;
  const messages = buildMessages();
  if (!messages) return;
  const reply = addTurn("assistant", "");
  reply.classList.add("streaming");
  const text = reply.querySelector(".text");
  const headers = { "Content-Type": "application/json" };
  if (sessionKey()) headers["Authorization"] = "Bearer " + sessionKey();
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").hidden = false;
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  let finish = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers,
      signal: state.controller.signal,
      body: JSON.stringify({
        model: state.model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        temperature: Number($("temperature").value),
        max_tokens: Number($("max-tokens").value),
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
    }
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) {
          if (firstToken === null) firstToken = performance.now();
          text.textContent += choice.delta.content;
          reply.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    if (state.mode === "chat") state.history.push({ role: "assistant", content: text.textContent });
  } catch (error) {
    if (error.name !== "AbortError") {
      reply.classList.add("error");
      text.textContent = error.message;
    }
  } finally {
    reply.classList.remove("streaming");
    state.controller = null;
    $("send").disabled = false;
    $("stop").hidden = true;
    showUsage(reply, usage, finish, started, firstToken);
  }
}

function showUsage(reply, usage, finish, started, firstToken) {
  if (!usage) return;
  const seconds = (performance.now() - started) / 1000;
  const rate = usage.completion_tokens / Math.max(seconds, 1e-3);
  const summary =
    `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens} tokens` +
    ` · ${rate.toFixed(1)} tokens/s` +
    (firstToken ? ` · first token ${((firstToken - started) / 1000).toFixed(2)} s` : "") +
    (finish ? ` · ${finish}` : "");
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = summary;
  reply.append(meta);
  $("usage").textContent = summary;
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", send);
  $("mode-instruction").addEventListener("click", () => setMode("instruction"));
  $("mode-chat").addEventListener("click", () => setMode("chat"));
  $("clear").addEventListener("click", clearTranscript);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("api-key").addEventListener("change", (e) => sessionStorage.setItem("alpaca-api-key", e.target.value));
  $("api-key").value = sessionKey();
  for (const id of ["instruction", "input", "message"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("composer").requestSubmit();
    });
  }
  loadInfo();
});
