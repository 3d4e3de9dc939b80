// cskit's web page: files and chat on the share (docs/http.md, "The web page").
// Hand-written, no framework, no build step. Every text from the server
// (file names, nicknames, messages) goes into the page as text, never as
// markup, with control and invisible characters made visible.
"use strict";

const $ = (id) => document.getElementById(id);
const PIECE = 8 << 20;  // uploads go in pieces of 8 MiB, each resumable

let csrf = "";
let me = null;
let cwd = "";  // the directory shown, relative to the share ("" = its root)

// ---------------------------------------------------------------- helpers

// Control characters (C0, DEL, C1), bidirectional overrides and invisible
// characters become visible escapes, as the terminal client shows them.
const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb]/g;
function safeText(s) {
  return String(s).replace(HIDDEN, (ch) => "\\u{" + ch.codePointAt(0).toString(16) + "}");
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children) e.append(typeof c === "string" ? safeText(c) : c);
  return e;
}

function encodePath(p) {
  return p.split("/").map(encodeURIComponent).join("/");
}

function join(dir, name) {
  return dir ? dir + "/" + name : name;
}

function humanSize(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

async function api(name, body) {
  const init = body === undefined ? { method: "GET" } : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  };
  init.credentials = "same-origin";
  const r = await fetch("/api/" + name, init);
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) {
    if (r.status === 401 && name !== "login") showLogin("your session has ended: log in again");
    throw failure(r.status, data.error || r.statusText);
  }
  return data;
}

// An Error with the HTTP status that caused it (0: no answer).
function failure(status, message) {
  const e = new Error(message);
  e.status = status;
  return e;
}

// Worth trying again: no answer, a conflict that passes (a piece still
// being written), or the server's own trouble.
function transient(e) {
  return !e.status || e.status === 409 || e.status >= 500;
}

function showError(where, err) {
  $(where).textContent = err ? safeText(err.message || err) : "";
}

// ---------------------------------------------------------------- login

function showLogin(message) {
  me = null;
  csrf = "";
  closeChat();
  $("app-view").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
}

function showApp(session) {
  me = session;
  csrf = session.csrf || "";
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = safeText(session.user);
  if (!$("chat-nick").value) $("chat-nick").value = session.user;
  listDir(cwd);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const s = await api("login", { user: $("login-user").value, token: $("login-token").value });
    $("login-token").value = "";
    showApp(s);
  } catch (e) {
    showError("login-error", e);
  }
});

$("logout").addEventListener("click", async () => {
  try { await api("logout", {}); } catch (e) { /* logged out either way */ }
  showLogin("");
});

// ---------------------------------------------------------------- files

async function listDir(dir) {
  showError("files-error", null);
  const r = await fetch("/files/" + encodePath(dir) + (dir ? "/" : ""), { credentials: "same-origin" });
  if (r.status === 401) return showLogin("your session has ended: log in again");
  if (!r.ok) return showError("files-error", (await r.text()).trim());
  const listing = await r.json();
  cwd = dir;
  renderCrumbs();
  const rows = listing.entries.sort((a, b) =>
    (a.type === "dir") !== (b.type === "dir") ? (a.type === "dir" ? -1 : 1) : a.name.localeCompare(b.name));
  const rowsOut = document.createDocumentFragment();  // (up to 100,000 rows: not as arguments)
  for (const e of rows) rowsOut.append(entryRow(e));
  $("entries").replaceChildren(rowsOut);
  if (listing.truncated) showError("files-error", "the listing was cut short: the directory is very large");
}

function renderCrumbs() {
  const parts = cwd ? cwd.split("/") : [];
  const crumbs = [el("button", { type: "button", onclick: () => listDir("") }, "share")];
  parts.forEach((name, i) => {
    const to = parts.slice(0, i + 1).join("/");
    crumbs.push(" / ", el("button", { type: "button", onclick: () => listDir(to) }, name));
  });
  $("crumbs").replaceChildren(...crumbs);
}

function entryRow(e) {
  const path = join(cwd, e.name);
  const name = e.type === "dir"
    ? el("button", { type: "button", class: "link", onclick: () => listDir(path) }, e.name + "/")
    : el("a", { href: "/files/" + encodePath(path), download: e.name }, e.name);
  const actions = el("td", { class: "actions" },
    el("button", { type: "button", class: "link", title: "rename", onclick: () => renameEntry(e) }, "rename"),
    el("button", { type: "button", class: "link", title: "delete", onclick: () => deleteEntry(e) }, "delete"));
  return el("tr", {},
    el("td", {}, name),
    el("td", { class: "num" }, e.type === "file" ? humanSize(e.size) : ""),
    el("td", {}, new Date(e.mtime * 1000).toLocaleString()),
    actions);
}

async function run(action) {
  try {
    await action();
  } catch (e) {
    showError("files-error", e);
  }
  await listDir(cwd);
}

function renameEntry(e) {
  const to = prompt("Rename '" + safeText(e.name) + "' to:", e.name);
  if (!to || to === e.name) return;
  run(() => api("rename", { from: join(cwd, e.name), to: join(cwd, to) }));
}

function deleteEntry(e) {
  const what = e.type === "dir" ? "the folder '" + safeText(e.name) + "' and everything in it" : "'" + safeText(e.name) + "'";
  if (!confirm("Delete " + what + "?")) return;
  run(() => api("delete", { path: join(cwd, e.name), recursive: e.type === "dir" }));
}

$("mkdir").addEventListener("click", () => {
  const name = prompt("New folder:");
  if (name) run(() => api("mkdir", { path: join(cwd, name) }));
});

// Uploads: each file in pieces (Content-Range), each piece with its
// SHA-256 (Content-Digest), which the server checks before it keeps it.
// An interrupted upload resumes where the server's part ends: the part is
// named by a key made of the file's path, size and time.

async function uploadKey(path, file) {
  const id = new TextEncoder().encode([path, file.size, file.lastModified].join("\n"));
  return hex(await crypto.subtle.digest("SHA-256", id)).slice(0, 32);
}

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

function base64(buf) {
  let s = "";
  for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
  return btoa(s);
}

// One PUT of one piece, with progress (XHR: fetch reports none for uploads).
async function putPiece(path, key, blob, first, total, onprogress) {
  const body = await blob.arrayBuffer();  // (rejects if the file changed or went)
  const digest = await crypto.subtle.digest("SHA-256", body);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", "/files/" + encodePath(path));
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Upload-Key", key);
    xhr.setRequestHeader("Content-Digest", "sha-256=:" + base64(digest) + ":");
    xhr.setRequestHeader("Content-Range", "bytes " + first + "-" + (first + body.byteLength - 1) + "/" + total);
    xhr.upload.onprogress = (ev) => onprogress(first + ev.loaded);
    xhr.onload = () => (xhr.status < 300 ? resolve(xhr) : reject(failure(xhr.status, xhr.responseText.trim() || xhr.statusText)));
    xhr.onerror = () => reject(failure(0, "the connection failed"));
    xhr.send(body);
  });
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// Where the server's part of this upload ends: the next piece starts
// there. (A part as large as the file was never committed, which a last
// piece does: it cannot be finished, and the upload starts over.)
async function resumeAt(path, key, size) {
  const at = (await api("upload-offset", { path, key })).offset;
  return at >= size ? 0 : at;
}

async function uploadFile(path, file) {
  const bar = el("progress", { max: Math.max(file.size, 1), value: 0 });
  const label = el("span", {}, path);
  const row = el("li", {}, label, bar);
  $("transfers").append(row);
  try {
    const key = await uploadKey(path, file);
    if (file.size === 0) await emptyPut(path);
    // Each piece is tried again after a failure (a lost connection, a
    // piece still held by the server), waiting longer each time; where to
    // start is asked the same way.
    let at = -1;
    for (let tries = 0, committed = false; !committed && file.size > 0;) {
      try {
        if (at < 0) at = await resumeAt(path, key, file.size);
        const end = Math.min(at + PIECE, file.size);
        await putPiece(path, key, file.slice(at, end), at, file.size, (v) => { bar.value = v; });
        committed = end === file.size;
        at = end;
        tries = 0;
      } catch (e) {
        if (!transient(e) || ++tries > 6) throw e;
        await sleep(500 * 2 ** Math.min(tries, 4));
        at = -1;
      }
      bar.value = Math.max(at, 0);
    }
    bar.value = bar.max;
    row.classList.add("done");
  } catch (e) {
    label.textContent = safeText(path + ": " + e.message);
    label.className = "error";
    throw e;
  }
}

// An empty file cannot be a piece (Content-Range needs a byte): a plain PUT.
async function emptyPut(path) {
  const r = await fetch("/files/" + encodePath(path), {
    method: "PUT", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }, body: new Blob([]),
  });
  if (!r.ok) throw new Error((await r.text()).trim());
}

// Makes each missing directory of `rel` under `base`; existing ones are fine.
async function ensureDirs(base, rel) {
  const parts = rel.split("/").slice(0, -1);
  let dir = base;
  for (const p of parts) {
    dir = join(dir, p);
    try {
      await api("mkdir", { path: dir });
    } catch (e) {
      if (!/already exists/.test(e.message)) throw e;
    }
  }
}

// [{rel, file}] of a drop: files, and folders read recursively.
async function droppedFiles(items) {
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((ok, fail) => entry.file(ok, fail));
      out.push({ rel: prefix + entry.name, file });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      out.push({ rel: prefix + entry.name + "/", file: null });
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const e of batch) await walk(e, prefix + entry.name + "/");
      }
    }
  };
  // The drop's items are readable only until the first await: taken first.
  const roots = [];
  for (const item of [...items]) {
    if (item.kind !== "file") continue;
    const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
    roots.push(entry ? { entry } : { file: item.getAsFile() });  // (no entry: a file only)
  }
  for (const r of roots) {
    if (r.entry) await walk(r.entry, "");
    else if (r.file) out.push({ rel: r.file.name, file: r.file });
  }
  return out;
}

async function uploadAll(list) {
  showError("files-error", null);
  const base = cwd;
  for (const { rel, file } of list) {
    try {
      await ensureDirs(base, rel);
      if (file) await uploadFile(join(base, rel), file);
    } catch (e) {
      showError("files-error", e);
    }
  }
  await listDir(base);
}

$("pick-files").addEventListener("change", (ev) => {
  uploadAll([...ev.target.files].map((f) => ({ rel: f.name, file: f })));
  ev.target.value = "";
});
$("pick-folder").addEventListener("change", (ev) => {
  uploadAll([...ev.target.files].map((f) => ({ rel: f.webkitRelativePath || f.name, file: f })));
  ev.target.value = "";
});
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  uploadAll(await droppedFiles(ev.dataTransfer.items));
});

// ---------------------------------------------------------------- chat

let ws = null;
let nextId = 1;
let room = "";  // the room messages go to
const rooms = new Set();

function nickClass(nick) {
  let h = 0;
  for (const ch of nick.toLowerCase()) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return "n" + (h % 8);
}

function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function logLine(cls, ...parts) {
  const log = $("chat-log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(el("li", { class: cls }, ...parts));
  while (log.children.length > 2000) log.firstChild.remove();
  if (atEnd) log.scrollTop = log.scrollHeight;
}

function nick(n) {
  return el("span", { class: "nick " + nickClass(n) }, n);
}

function showMessage(m) {
  const where = m.private ? (m.from === me.nick ? "→ " + m.to : "(private)") : m.room;
  const body = m.action ? ["* ", nick(m.from), " ", el("span", { class: "text" }, m.text)]
                        : ["<", nick(m.from), "> ", el("span", { class: "text" }, m.text)];
  logLine("message" + (m.private ? " private" : "") + (m.history ? " history" : ""),
    el("span", { class: "time" }, time(m.ts) + " "), el("span", { class: "where" }, where + " "), ...body);
}

function showEvent(e) {
  const what = {
    join: () => [nick(e.nick), " joined " + e.room],
    part: () => [nick(e.nick), " left " + e.room + (e.reason ? " (" + e.reason + ")" : "")],
    quit: () => [nick(e.nick), " quit" + (e.reason ? " (" + e.reason + ")" : "")],
    nick: () => [nick(e.nick), " is now ", nick(e.new_nick)],
    topic: () => [nick(e.nick), " set the topic of " + e.room + ": " + e.topic],
    away: () => [nick(e.nick), e.message ? " is away: " + e.message : " is back"],
  }[e.event];
  if (what) logLine("event", el("span", { class: "time" }, time(e.ts) + " "), ...what());
}

function renderRooms() {
  $("chat-rooms").replaceChildren(...[...rooms].map((r) =>
    el("button", { type: "button", class: r === room ? "active" : "", onclick: () => { room = r; renderRooms(); } }, r)));
}

function send(msg) {
  msg.id = nextId++;
  ws.send(JSON.stringify(msg));
}

function closeChat() {
  if (ws) ws.close();
  ws = null;
}

function chatConnected(on) {
  $("chat-join").disabled = !on;
  $("chat-text").disabled = !on;
  $("chat-send").disabled = !on;
  $("chat-connect").textContent = on ? "Disconnect" : "Connect";
}

$("chat-connect").addEventListener("click", () => {
  if (ws) return closeChat();
  $("chat-status").textContent = "connecting…";
  const socket = new WebSocket("wss://" + location.host + "/api/chat");
  ws = socket;
  ws.onopen = () => send({ type: "chat.hello", nick: $("chat-nick").value });
  ws.onclose = (ev) => {
    if (ws !== socket && ws !== null) return;  // an older socket, replaced since
    ws = null;
    rooms.clear();
    renderRooms();
    chatConnected(false);
    $("chat-status").textContent = safeText("disconnected" + (ev.reason ? ": " + ev.reason : ""));
  };
  ws.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    switch (m.type) {
      case "chat.welcome":
        me.nick = m.nick;
        chatConnected(true);
        $("chat-status").textContent = safeText("connected as " + m.nick);
        send({ type: "chat.join", room: $("chat-room").value || m.default_room });
        break;
      case "chat.joined":
        rooms.add(m.room);
        room = m.room;
        renderRooms();
        logLine("event", "joined " + m.room + (m.topic ? ": " + m.topic : "") +
          (m.members.length ? " (with " + m.members.join(", ") + ")" : ""));
        break;
      case "chat.message": showMessage(m); break;
      case "chat.event":
        if (m.event === "nick" && m.nick === me.nick) me.nick = m.new_nick;
        if (m.event === "part" && m.nick === me.nick) { rooms.delete(m.room); renderRooms(); }
        showEvent(m);
        break;
      case "error": logLine("event error", (m.message || m.code) + (m.suggestion ? " (try " + m.suggestion + ")" : "")); break;
    }
  };
});

$("chat-join").addEventListener("click", () => send({ type: "chat.join", room: $("chat-room").value }));

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("chat-text");
  const line = input.value;
  if (!line || !ws) return;
  input.value = "";
  let m;
  if ((m = /^\/msg\s+(\S+)\s+(.+)$/.exec(line))) send({ type: "chat.msg", to: m[1], text: m[2] });
  else if ((m = /^\/me\s+(.+)$/.exec(line))) send({ type: "chat.say", room, text: m[1], action: true });
  else if ((m = /^\/join\s+(\S+)$/.exec(line))) send({ type: "chat.join", room: m[1] });
  else if ((m = /^\/part(?:\s+(\S+))?$/.exec(line))) send({ type: "chat.part", room: m[1] || room });
  else if ((m = /^\/nick\s+(\S+)$/.exec(line))) send({ type: "chat.nick", nick: m[1] });
  else if (!room) logLine("event error", "join a room first");
  else send({ type: "chat.say", room, text: line });
});

// ---------------------------------------------------------------- tabs, start

function showTab(name) {
  $("files-view").hidden = name !== "files";
  $("chat-view").hidden = name !== "chat";
  $("tab-files").classList.toggle("active", name === "files");
  $("tab-chat").classList.toggle("active", name === "chat");
}
$("tab-files").addEventListener("click", () => showTab("files"));
$("tab-chat").addEventListener("click", () => showTab("chat"));

api("session").then(showApp, () => showLogin(""));
