// The web chat page: seed 004's REST API for accounts, contacts, rooms and history, and its
// Socket.IO events for everything live. No framework and no build step. Every piece of data
// reaches the page through textContent, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "chatserv.session";

const state = {
  session: null,            // {sessionID, user_id, username}
  socket: null,
  contacts: new Map(),      // user id -> {id, name, status, online, unread}
  rooms: new Map(),         // room id -> {id, name, unread}
  conversations: new Map(), // "u<id>" or "g<id>" -> Map(message id -> message)
  open: null,               // the key of the conversation on screen
  retry: null,              // timer of our own reconnect after the server ended the socket
  retryDelay: 1000,
};

// notices and errors ---------------------------------------------------------------------

function notice(text, kind = "info") {
  const el = $("notice");
  el.textContent = text;
  el.className = kind;
  el.hidden = !text;
}

function authError(text) {
  $("auth-error").textContent = text;
}

// REST -----------------------------------------------------------------------------------

async function api(path, params = {}) {
  const body = new URLSearchParams(params);
  if (state.session && !("sessionID" in params)) body.set("sessionID", state.session.sessionID);
  let response;
  try {
    response = await fetch(path, { method: "POST", body });
  } catch (e) {
    throw new Error("Cannot reach the server");
  }
  let data;
  try {
    data = await response.json();
  } catch (e) {
    throw new Error(`Unexpected reply from the server (HTTP ${response.status})`);
  }
  if (!response.ok) {
    if (data && data.error === "Invalid session") sessionEnded();
    throw new Error((data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

// log in, register, log out ----------------------------------------------------------------

async function submitAuth(event) {
  event.preventDefault();
  const action = event.submitter ? event.submitter.value : "login";
  const username = $("username").value.trim();
  const password = $("password").value;
  authError("");
  try {
    if (action === "register") await api("/register", { username, password });
    const reply = await api("/login", { username, password });
    $("password").value = "";
    startSession({ sessionID: reply.sessionID, user_id: reply.user_id, username: reply.username });
  } catch (e) {
    authError(e.message);
  }
}

function startSession(session) {
  state.session = session;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  $("me").textContent = session.username;
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  notice("Connecting…");
  connectSocket();
  refreshLists();
}

function stopSession() {
  clearTimeout(state.retry);
  if (state.socket) {
    state.socket.removeAllListeners();
    state.socket.io.removeAllListeners();
    state.socket.disconnect();
  }
  sessionStorage.removeItem(SESSION_KEY);
  Object.assign(state, { session: null, socket: null, open: null });
  state.contacts.clear();
  state.rooms.clear();
  state.conversations.clear();
  $("contacts").replaceChildren();
  $("rooms").replaceChildren();
  $("messages").replaceChildren();
  $("conversation-title").textContent = "Pick a contact or a room";
  setComposer(false);
  $("chat-view").hidden = true;
  $("auth-view").hidden = false;
}

function sessionEnded() {
  if (!state.session) return;
  stopSession();
  notice("");
  authError("Your session has ended: please log in again.");
}

async function logout() {
  const sessionID = state.session && state.session.sessionID;
  stopSession();
  notice("");
  if (sessionID) api("/logout", { sessionID }).catch(() => {});
}

// Socket.IO --------------------------------------------------------------------------------

function connectSocket() {
  const socket = io({ query: { sessionID: state.session.sessionID }, reconnectionDelayMax: 5000 });
  state.socket = socket;
  socket.on("connect", () => {
    state.retryDelay = 1000;
    notice("");
    setComposer(state.open !== null);
    refreshLists();
  });
  socket.on("disconnect", (reason) => {
    setComposer(false);
    notice("Connection lost — reconnecting…", "error");
    // The server ended the socket itself (shutdown, logout elsewhere): the client does not
    // reconnect by itself then, so we do; an ended session is refused and sends us to log in.
    if (reason === "io server disconnect") scheduleReconnect();
  });
  socket.io.on("reconnect_attempt", (attempt) => {
    notice(`Connection lost — reconnecting (attempt ${attempt})…`, "error");
  });
  socket.on("connect_error", (err) => {
    if (err.message === "Invalid session") {
      sessionEnded();
    } else if (!socket.active) {
      notice("Cannot connect — reconnecting…", "error");
      scheduleReconnect();
    } else {
      notice("Cannot reach the server — reconnecting…", "error");
    }
  });
  socket.on("new_message", receive);
  socket.on("user_status", (status) => {
    const contact = state.contacts.get(status.user_id);
    if (contact) {
      contact.online = status.status === "online";
      renderContacts();
    }
  });
  socket.on("contact_added", () => refreshLists());
  socket.on("contact_request", (request) => {
    notice(`${request.username} added you as a contact.`);
    refreshLists();
  });
  socket.on("error", (err) => notice((err && err.message) || "Error", "error"));
}

function scheduleReconnect() {
  clearTimeout(state.retry);
  state.retry = setTimeout(() => {
    if (state.socket && !state.socket.connected) state.socket.connect();
  }, state.retryDelay);
  state.retryDelay = Math.min(state.retryDelay * 2, 10000);
}

function emit(name, data) {
  return new Promise((resolve, reject) => {
    if (!state.socket || !state.socket.connected) {
      reject(new Error("Not connected: wait for the connection to come back"));
      return;
    }
    state.socket.timeout(10000).emit(name, { sessionID: state.session.sessionID, ...data }, (err, reply) => {
      if (err) reject(new Error("No answer from the server"));
      else if (reply && reply.error) reject(new Error(reply.error));
      else resolve(reply);
    });
  });
}

// contacts and rooms -----------------------------------------------------------------------

async function refreshLists() {
  try {
    const [contacts, presence, rooms] = await Promise.all(
      [api("/getContacts"), api("/getPresence"), api("/getGroups")]);
    const online = new Set(presence.filter((p) => p.status === "online").map((p) => p.user_id));
    for (const c of contacts) {
      const known = state.contacts.get(c.contact_id);
      state.contacts.set(c.contact_id, {
        id: c.contact_id, name: c.name, status: c.status, online: online.has(c.contact_id),
        unread: known ? known.unread : 0,
      });
    }
    for (const r of rooms) {
      const known = state.rooms.get(r.group_id);
      state.rooms.set(r.group_id, { id: r.group_id, name: r.name, unread: known ? known.unread : 0 });
    }
    renderContacts();
    renderRooms();
  } catch (e) {
    if (state.session) notice(e.message, "error");
  }
}

function listItem(key, label, unread, extra) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.key = key;
  button.className = key === state.open ? "selected" : "";
  if (extra) extra(button);
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label;
  button.append(name);
  if (unread) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = String(unread);
    button.append(badge);
  }
  button.addEventListener("click", () => openConversation(key));
  li.append(button);
  return li;
}

function renderContacts() {
  const items = [...state.contacts.values()].sort((a, b) => a.name.localeCompare(b.name)).map((c) =>
    listItem(`u${c.id}`, c.name, c.unread, (button) => {
      button.dataset.user = c.name;
      button.classList.add(c.online ? "online" : "offline");
      button.title = `${c.online ? "online" : "offline"}${c.status && c.status !== "friend" ? `, ${c.status}` : ""}`;
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.setAttribute("aria-label", c.online ? "online" : "offline");
      button.append(dot);
    }));
  $("contacts").replaceChildren(...items);
}

function renderRooms() {
  const items = [...state.rooms.values()].sort((a, b) => a.name.localeCompare(b.name)).map((r) =>
    listItem(`g${r.id}`, `#${r.name}`, r.unread, (button) => { button.dataset.room = r.name; }));
  $("rooms").replaceChildren(...items);
}

async function addContact(event) {
  event.preventDefault();
  const input = $("contact-name");
  try {
    await emit("add_contact", { contact_username: input.value.trim() });
    input.value = "";
  } catch (e) {
    notice(e.message, "error");
  }
}

async function joinRoom(event) {
  event.preventDefault();
  const input = $("room-name");
  try {
    const room = await api("/joinGroup", { group: input.value.trim().replace(/^#/, "") });
    input.value = "";
    await refreshLists();
    openConversation(`g${room.group_id}`);
  } catch (e) {
    notice(e.message, "error");
  }
}

// conversations ----------------------------------------------------------------------------

function conversation(key) {
  if (!state.conversations.has(key)) state.conversations.set(key, new Map());
  return state.conversations.get(key);
}

function target(key) {
  return { id: Number(key.slice(1)), isGroup: key[0] === "g" };
}

async function openConversation(key) {
  state.open = key;
  const { id, isGroup } = target(key);
  const entry = isGroup ? state.rooms.get(id) : state.contacts.get(id);
  if (entry) entry.unread = 0;
  $("conversation-title").textContent = entry ? (isGroup ? `#${entry.name}` : entry.name) : "";
  setComposer(Boolean(state.socket && state.socket.connected));
  renderContacts();
  renderRooms();
  renderMessages();
  try {
    const history = isGroup ? await api("/getGroupMessages", { groupID: id })
                            : await api("/getContactMessages", { contactID: id });
    const messages = conversation(key);
    for (const m of history) {
      messages.set(m.message_id, {
        id: m.message_id, sender_id: m.sender_user_id, sender: m.sender_username, content: m.content,
        timestamp: m.send_at,
      });
    }
    if (state.open === key) renderMessages();
  } catch (e) {
    notice(e.message, "error");
  }
  $("message").focus();
}

function receive(m) {
  const me = state.session.user_id;
  const key = m.is_group ? `g${m.recipient_id}` : `u${m.sender_id === me ? m.recipient_id : m.sender_id}`;
  conversation(key).set(m.message_id, {
    id: m.message_id, sender_id: m.sender_id, sender: m.sender_username, content: m.content,
    timestamp: m.timestamp,
  });
  if (key === state.open) {
    renderMessages();
    return;
  }
  const { id, isGroup } = target(key);
  const list = isGroup ? state.rooms : state.contacts;
  if (!list.has(id)) {
    refreshLists();  // a room we were added to, or someone who is not (yet) a contact
    if (!isGroup) list.set(id, { id, name: m.sender_username, status: "", online: false, unread: 0 });
  }
  list.get(id).unread += 1;
  isGroup ? renderRooms() : renderContacts();
}

function senderName(m) {
  if (m.sender) return m.sender;
  if (m.sender_id === state.session.user_id) return state.session.username;
  const contact = state.contacts.get(m.sender_id);
  return contact ? contact.name : `user ${m.sender_id}`;
}

function renderMessages() {
  const list = $("messages");
  const messages = state.open ? [...conversation(state.open).values()].sort((a, b) => a.id - b.id) : [];
  list.replaceChildren(...messages.map((m) => {
    const li = document.createElement("li");
    li.className = m.sender_id === state.session.user_id ? "message mine" : "message";
    li.dataset.id = String(m.id);
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "sender";
    who.textContent = senderName(m);
    const when = document.createElement("time");
    when.dateTime = m.timestamp;
    when.textContent = new Date(m.timestamp).toLocaleTimeString();
    meta.append(who, when);
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = m.content;
    li.append(meta, body);
    return li;
  }));
  list.scrollTop = list.scrollHeight;
}

function setComposer(enabled) {
  $("message").disabled = !enabled;
  $("send").disabled = !enabled;
}

async function send(event) {
  event.preventDefault();
  const input = $("message");
  const content = input.value;
  if (!content || !state.open) return;
  const { id, isGroup } = target(state.open);
  try {
    await emit("send_message", { recipient_id: id, content, is_group: isGroup, type: "text" });
    input.value = "";
  } catch (e) {
    notice(`Not sent: ${e.message}`, "error");
  }
}

// start ------------------------------------------------------------------------------------

$("auth-form").addEventListener("submit", submitAuth);
$("logout").addEventListener("click", logout);
$("add-contact").addEventListener("submit", addContact);
$("join-room").addEventListener("submit", joinRoom);
$("composer").addEventListener("submit", send);

if (typeof io !== "function") {
  authError("The Socket.IO client did not load; the page cannot chat.");
} else {
  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      startSession(JSON.parse(saved));
    } catch (e) {
      sessionStorage.removeItem(SESSION_KEY);
    }
  }
}
