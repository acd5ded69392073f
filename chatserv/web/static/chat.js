// The web chat page: seed 004's REST API for accounts, conversations and history, and its
// Socket.IO events for everything live. No framework and no build step. Every piece of data
// reaches the page through textContent, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "chatserv.session";
const NOTIFY_KEY = "chatserv.notify";
const PAGE = 50;                 // messages per history request
const LIST_PAGE = 500;           // conversations per /getConversations request
const GROUP_GAP = 5 * 60 * 1000; // one sender's messages closer than this share one header
const NARROW = window.matchMedia("(max-width: 700px)");

const state = {
  session: null,            // {sessionID, user_id, username}
  socket: null,
  people: new Map(),        // user id -> {id, name, contact (status or null), online, unread, lastId}
  rooms: new Map(),         // room id -> {id, name, unread, lastId}
  conversations: new Map(), // "u<id>" or "g<id>" -> {messages: Map(id -> message), complete}
  open: null,               // the key of the conversation on screen
  retry: null,              // timer of our own reconnect after the server ended the socket
  retryDelay: 1000,
  requestFrom: null,        // {user_id, username} of the "X added you" notice on screen
};

// notices and errors ---------------------------------------------------------------------

// The header says how the connection is; everything else is said next to what it concerns.
function notice(text, kind = "info") {
  const el = $("notice");
  el.textContent = text;
  el.className = kind;
  el.hidden = !text;
}

function fieldError(id, text) {
  $(id).textContent = text;
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
  fieldError("auth-error", "");
  try {
    if (action === "register") await api("/register", { username, password });
    const reply = await api("/login", { username, password });
    $("password").value = "";
    startSession({ sessionID: reply.sessionID, user_id: reply.user_id, username: reply.username });
  } catch (e) {
    fieldError("auth-error", e.message);
  }
}

function startSession(session) {
  state.session = session;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  $("me").textContent = session.username;
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  notice("Connecting…");
  showNotifyButton();
  connectSocket();
}

function stopSession() {
  clearTimeout(state.retry);
  if (state.socket) {
    state.socket.removeAllListeners();
    state.socket.io.removeAllListeners();
    state.socket.disconnect();
  }
  sessionStorage.removeItem(SESSION_KEY);
  Object.assign(state, { session: null, socket: null, open: null, requestFrom: null });
  state.people.clear();
  state.rooms.clear();
  state.conversations.clear();
  for (const id of ["me", "contacts", "rooms", "messages"]) $(id).replaceChildren();
  for (const id of ["add-contact-error", "join-room-error", "composer-error"]) fieldError(id, "");
  $("request").hidden = true;
  showConversationHead();
  setComposer(false);
  document.body.classList.remove("in-conversation");
  $("chat-view").hidden = true;
  $("auth-view").hidden = false;
  updateTitle();
}

function sessionEnded() {
  if (!state.session) return;
  stopSession();
  notice("");
  fieldError("auth-error", "Your session has ended: please log in again.");
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
  // Every connect, the first and each after a gap: what arrived meanwhile was never pushed to
  // this page, so the list and the open conversation are read again.
  socket.on("connect", () => {
    state.retryDelay = 1000;
    notice("");
    setComposer(state.open !== null);
    catchUp();
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
    const person = state.people.get(status.user_id);
    if (person) {
      person.online = status.status === "online";
      renderPeople();
      if (state.open === `u${person.id}`) showConversationHead();
    }
  });
  socket.on("conversation_read", conversationRead);
  socket.on("contact_added", () => refreshLists());
  socket.on("contact_request", contactRequest);
  // Every event this page emits asks for an acknowledgement, whose error is shown next to the
  // input it came from; the "error" event that comes with it says nothing more.
  socket.on("error", () => {});
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

async function catchUp() {
  await refreshLists();
  if (state.open) await loadNewest(state.open);
}

// the list: people (contacts and anyone written to) and rooms ------------------------------

async function fetchConversations() {
  const found = [];
  let before = null;
  for (;;) {
    const page = await api("/getConversations", before ? { limit: LIST_PAGE, before } : { limit: LIST_PAGE });
    found.push(...page);
    const last = page[page.length - 1];
    if (page.length < LIST_PAGE || !last.last_message) return found;
    before = last.last_message.message_id;
  }
}

async function refreshLists() {
  try {
    const entries = await fetchConversations();
    const people = new Map();
    const rooms = new Map();
    for (const e of entries) {
      const lastId = e.last_message ? e.last_message.message_id : 0;
      if (e.kind === "group") {
        rooms.set(e.id, { id: e.id, name: e.name, unread: e.unread, lastId });
      } else {
        people.set(e.id, {
          id: e.id, name: e.name, contact: e.contact_status, online: e.status === "online",
          unread: e.unread, lastId,
        });
      }
    }
    state.people = people;
    state.rooms = rooms;
    if (state.open && isViewing(state.open)) entry(state.open).unread = 0;
    renderPeople();
    renderRooms();
    showConversationHead();
  } catch (e) {
    if (state.session) notice(e.message, "error");
  }
}

function entry(key) {
  const { id, isGroup } = target(key);
  return (isGroup ? state.rooms : state.people).get(id);
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
    badge.textContent = unread >= 1000 ? "999+" : String(unread);
    badge.setAttribute("aria-label", `${unread} unread`);
    button.append(badge);
  }
  button.addEventListener("click", () => openConversation(key));
  li.append(button);
  return li;
}

const byRecency = (a, b) => (b.lastId - a.lastId) || a.name.localeCompare(b.name);

function renderPeople() {
  const items = [...state.people.values()].sort(byRecency).map((p) =>
    listItem(`u${p.id}`, p.name, p.unread, (button) => {
      button.dataset.user = p.name;
      button.classList.add(p.online ? "online" : "offline");
      if (!p.contact) button.classList.add("stranger");
      if (p.contact === "blocked") button.classList.add("blocked");
      const details = [p.online ? "online" : "offline"];
      if (!p.contact) details.push("not a contact");
      else if (p.contact !== "friend") details.push(p.contact);
      button.title = details.join(", ");
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.setAttribute("aria-label", p.online ? "online" : "offline");
      button.append(dot);
    }));
  $("contacts").replaceChildren(...items);
  updateTitle();
}

function renderRooms() {
  const items = [...state.rooms.values()].sort(byRecency).map((r) =>
    listItem(`g${r.id}`, `#${r.name}`, r.unread, (button) => { button.dataset.room = r.name; }));
  $("rooms").replaceChildren(...items);
  updateTitle();
}

function updateTitle() {
  let unread = 0;
  for (const list of [state.people, state.rooms]) for (const e of list.values()) unread += e.unread;
  document.title = unread ? `(${unread}) chatserv` : "chatserv";
}

async function addContact(event) {
  event.preventDefault();
  const input = $("contact-name");
  try {
    await emit("add_contact", { contact_username: input.value.trim() });
    input.value = "";
    fieldError("add-contact-error", "");
  } catch (e) {
    fieldError("add-contact-error", e.message);
  }
}

async function joinRoom(event) {
  event.preventDefault();
  const input = $("room-name");
  try {
    const room = await api("/joinGroup", { group: input.value.trim().replace(/^#/, "") });
    input.value = "";
    fieldError("join-room-error", "");
    await refreshLists();
    openConversation(`g${room.group_id}`);
  } catch (e) {
    fieldError("join-room-error", e.message);
  }
}

// "X added you", block, unblock ------------------------------------------------------------

function contactRequest(request) {
  state.requestFrom = request;
  $("request-text").textContent = `${request.username} added you as a contact.`;
  const known = state.people.get(request.user_id);
  $("request-add").hidden = Boolean(known && known.contact);
  $("request").hidden = false;
  refreshLists();
}

async function answerRequest(action) {
  const request = state.requestFrom;
  if (!request) return;
  try {
    if (action === "add") await emit("add_contact", { contact_username: request.username });
    else await api("/changeContact", { contactID: request.user_id, status: "blocked" });
    dismissRequest();
    await refreshLists();
  } catch (e) {
    $("request-text").textContent = `${request.username} added you as a contact. ${e.message}`;
  }
}

function dismissRequest() {
  state.requestFrom = null;
  $("request").hidden = true;
}

async function changePeer(status) {
  const person = state.open && entry(state.open);
  if (!person || state.open[0] !== "u") return;
  try {
    await api("/changeContact", { contactID: person.id, status });
    fieldError("composer-error", "");
    await refreshLists();
  } catch (e) {
    fieldError("composer-error", e.message);
  }
}

// conversations ----------------------------------------------------------------------------

function conversation(key) {
  if (!state.conversations.has(key)) state.conversations.set(key, { messages: new Map(), complete: false });
  return state.conversations.get(key);
}

function target(key) {
  return { id: Number(key.slice(1)), isGroup: key[0] === "g" };
}

// The conversation is on screen (on a phone, the list may be the screen instead).
function isViewing(key) {
  return key === state.open && document.visibilityState === "visible" &&
    (!NARROW.matches || document.body.classList.contains("in-conversation"));
}

function fromHistory(m) {
  return {
    id: m.message_id, sender_id: m.sender_user_id, sender: m.sender_username, content: m.content,
    type: m.type || "text", timestamp: m.send_at,
  };
}

function history(key, params) {
  const { id, isGroup } = target(key);
  return isGroup ? api("/getGroupMessages", { groupID: id, ...params })
                 : api("/getContactMessages", { contactID: id, ...params });
}

async function openConversation(key) {
  state.open = key;
  document.body.classList.add("in-conversation");
  const found = entry(key);
  if (found) found.unread = 0;
  showConversationHead();
  setComposer(Boolean(state.socket && state.socket.connected));
  fieldError("composer-error", "");
  renderPeople();
  renderRooms();
  renderMessages("bottom");
  await loadNewest(key);
  if (!NARROW.matches) $("message").focus();
}

// The newest page of a conversation, merged with what the page holds (a gap means start over).
async function loadNewest(key) {
  try {
    const page = (await history(key, { limit: PAGE })).map(fromHistory);
    const held = conversation(key);
    if (held.messages.size && !page.some((m) => held.messages.has(m.id))) {
      held.messages.clear();
      held.complete = false;
    }
    if (!held.messages.size) held.complete = page.length < PAGE;
    for (const m of page) held.messages.set(m.id, m);
    if (state.open !== key) return;
    renderMessages("auto");
    if (page.length) markRead(key, page[page.length - 1].id);
  } catch (e) {
    if (state.open === key) fieldError("composer-error", e.message);
  }
}

async function loadOlder() {
  const key = state.open;
  const held = conversation(key);
  const oldest = Math.min(...held.messages.keys());
  try {
    const page = (await history(key, { limit: PAGE, before: oldest })).map(fromHistory);
    for (const m of page) held.messages.set(m.id, m);
    held.complete = page.length < PAGE;
    if (state.open === key) renderMessages("older");
  } catch (e) {
    fieldError("composer-error", e.message);
  }
}

function markRead(key, messageId) {
  const { id, isGroup } = target(key);
  const found = entry(key);
  if (found) found.unread = 0;
  updateTitle();
  api("/markRead", isGroup ? { groupID: id, message_id: messageId } : { contactID: id, message_id: messageId })
    .catch(() => {});  // the count comes back at the next connect; nothing to show here
}

// Another session of ours read a conversation: its count goes, here too.
function conversationRead(read) {
  const found = (read.kind === "group" ? state.rooms : state.people).get(read.id);
  if (!found) return;
  if (read.last_read_id >= found.lastId) {
    found.unread = 0;
    read.kind === "group" ? renderRooms() : renderPeople();
  } else {
    refreshLists();
  }
}

function receive(m) {
  const me = state.session.user_id;
  const key = m.is_group ? `g${m.recipient_id}` : `u${m.sender_id === me ? m.recipient_id : m.sender_id}`;
  const message = {
    id: m.message_id, sender_id: m.sender_id, sender: m.sender_username, content: m.content,
    type: m.type || "text", timestamp: m.timestamp,
  };
  if (state.conversations.has(key) || key === state.open) conversation(key).messages.set(message.id, message);
  const found = entry(key);
  if (!found) {
    refreshLists();  // a room we were added to, or someone new: the list says who
  } else {
    found.lastId = message.id;
    if (m.sender_id !== me && !isViewing(key)) found.unread += 1;
    key[0] === "g" ? renderRooms() : renderPeople();
  }
  if (key === state.open) {
    renderMessages(m.sender_id === me ? "bottom" : "incoming");
    if (m.sender_id !== me && isViewing(key)) markRead(key, message.id);
  }
  if (m.sender_id !== me && !isViewing(key)) notify(key, message, m.is_group);
}

// rendering a conversation -----------------------------------------------------------------

function senderName(m) {
  if (m.sender) return m.sender;
  if (m.sender_id === state.session.user_id) return state.session.username;
  const person = state.people.get(m.sender_id);
  return person ? person.name : `user ${m.sender_id}`;
}

function dayLabel(at) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (at.toDateString() === today.toDateString()) return "Today";
  if (at.toDateString() === yesterday.toDateString()) return "Yesterday";
  return at.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

function daySeparator(at) {
  const li = document.createElement("li");
  li.className = "day";
  li.setAttribute("role", "separator");
  li.textContent = dayLabel(at);
  return li;
}

function messageItem(m, continued) {
  const at = new Date(m.timestamp);
  const full = at.toLocaleString(undefined, { dateStyle: "full", timeStyle: "long" });
  const li = document.createElement("li");
  li.className = `message ${m.type === "action" || m.type === "notice" ? m.type : "text"}`;
  if (m.sender_id === state.session.user_id) li.classList.add("mine");
  if (continued) {
    li.classList.add("continued");
    li.title = full;
  }
  li.dataset.id = String(m.id);
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "sender";
  who.textContent = m.type === "notice" ? `-${senderName(m)}-` : senderName(m);
  const when = document.createElement("time");
  when.dateTime = m.timestamp;
  when.title = full;
  when.textContent = at.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  meta.append(who, when);
  const body = document.createElement("div");
  body.className = "body";
  // IRC's /me: "* alice waves", the way IRC clients show it.
  body.textContent = m.type === "action" ? `${senderName(m)} ${m.content}` : m.content;
  li.append(meta, body);
  return li;
}

function nearBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

// how: "bottom" (show the newest), "auto" (stay at the bottom if there), "incoming" (a new
// message: follow it if at the bottom, else offer the pill), "older" (keep what was in view).
function renderMessages(how) {
  const list = $("messages");
  const wasNear = nearBottom(list);
  const top = list.scrollTop;
  const fromBottom = list.scrollHeight - list.scrollTop;
  const held = state.open ? conversation(state.open) : null;
  const messages = held ? [...held.messages.values()].sort((a, b) => a.id - b.id) : [];
  const items = [];
  if (held && !held.complete && messages.length) {
    const li = document.createElement("li");
    li.className = "older";
    const button = document.createElement("button");
    button.type = "button";
    button.id = "load-older";
    button.className = "link";
    button.textContent = "Load older messages";
    button.addEventListener("click", loadOlder);
    li.append(button);
    items.push(li);
  }
  let day = null;
  let previous = null;
  for (const m of messages) {
    const at = new Date(m.timestamp);
    if (at.toDateString() !== day) {
      day = at.toDateString();
      items.push(daySeparator(at));
      previous = null;
    }
    const continued = previous !== null && previous.sender_id === m.sender_id && m.type === "text" &&
      previous.type === "text" && at - new Date(previous.timestamp) < GROUP_GAP;
    items.push(messageItem(m, continued));
    previous = m;
  }
  list.replaceChildren(...items);
  if (how === "bottom" || ((how === "auto" || how === "incoming") && wasNear)) {
    list.scrollTop = list.scrollHeight;
    $("new-messages").hidden = true;
  } else if (how === "older") {
    list.scrollTop = list.scrollHeight - fromBottom;
  } else {
    list.scrollTop = top;
    if (how === "incoming") $("new-messages").hidden = false;
  }
}

function toNewest() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
  $("new-messages").hidden = true;
}

function showConversationHead() {
  const key = state.open;
  const found = key && entry(key);
  const isPerson = Boolean(key && key[0] === "u");
  $("conversation-title").textContent = !key ? "Pick a contact or a room"
    : found ? (isPerson ? found.name : `#${found.name}`) : "";
  let status = "";
  if (isPerson && found) {
    status = found.contact === "blocked" ? "blocked" : found.online ? "online" : "offline";
    if (!found.contact) status += " · not a contact";
  }
  $("conversation-status").textContent = status;
  $("peer-add").hidden = !(isPerson && found && !found.contact);
  $("peer-block").hidden = !(isPerson && found);
  $("peer-block").textContent = found && found.contact === "blocked" ? "Unblock" : "Block";
}

function back() {
  state.open = null;
  document.body.classList.remove("in-conversation");
  $("new-messages").hidden = true;
  showConversationHead();
  renderPeople();
  renderRooms();
  renderMessages("bottom");
}

// the composer: Enter sends, Shift+Enter starts a new line ---------------------------------

function setComposer(enabled) {
  $("message").disabled = !enabled;
  $("send").disabled = !enabled;
}

function composerKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

function fitComposer() {
  const input = $("message");
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight}px`;
}

async function send(event) {
  event.preventDefault();
  const input = $("message");
  const content = input.value;
  if (!content.trim() || !state.open) return;
  const { id, isGroup } = target(state.open);
  // Emptied at once, so what is typed next is never lost to this message's answer.
  input.value = "";
  fitComposer();
  try {
    await emit("send_message", { recipient_id: id, content, is_group: isGroup, type: "text" });
    fieldError("composer-error", "");
  } catch (e) {
    if (!input.value) {  // back in the composer, to send again
      input.value = content;
      fitComposer();
    }
    fieldError("composer-error", `Not sent: ${e.message}`);
  }
}

// browser notifications, opt-in ------------------------------------------------------------

function notificationsOn() {
  return "Notification" in window && Notification.permission === "granted" &&
    localStorage.getItem(NOTIFY_KEY) === "on";
}

function showNotifyButton() {
  const button = $("notify");
  button.hidden = !("Notification" in window) || Notification.permission === "denied";
  button.textContent = notificationsOn() ? "Turn off notifications" : "Turn on notifications";
}

async function toggleNotifications() {
  if (notificationsOn()) {
    localStorage.removeItem(NOTIFY_KEY);
  } else if (await Notification.requestPermission() === "granted") {
    localStorage.setItem(NOTIFY_KEY, "on");
  }
  showNotifyButton();
}

function notify(key, message, isGroup) {
  if (!notificationsOn()) return;
  const found = entry(key);
  const where = isGroup && found ? ` in #${found.name}` : "";
  const text = message.type === "action" ? `* ${senderName(message)} ${message.content}` : message.content;
  const shown = new Notification(`${senderName(message)}${where}`, { body: text.slice(0, 200), tag: key });
  shown.addEventListener("click", () => {
    window.focus();
    openConversation(key);
    shown.close();
  });
}

// start ------------------------------------------------------------------------------------

$("auth-form").addEventListener("submit", submitAuth);
$("logout").addEventListener("click", logout);
$("add-contact").addEventListener("submit", addContact);
$("join-room").addEventListener("submit", joinRoom);
$("composer").addEventListener("submit", send);
$("message").addEventListener("keydown", composerKey);
$("message").addEventListener("input", fitComposer);
$("messages").addEventListener("scroll", () => {
  if (nearBottom($("messages"))) $("new-messages").hidden = true;
});
$("new-messages").addEventListener("click", toNewest);
$("back").addEventListener("click", back);
$("peer-add").addEventListener("click", () => changePeer("friend"));
$("peer-block").addEventListener("click", () => {
  const found = state.open && entry(state.open);
  changePeer(found && found.contact === "blocked" ? "friend" : "blocked");
});
$("request-add").addEventListener("click", () => answerRequest("add"));
$("request-block").addEventListener("click", () => answerRequest("block"));
$("request-dismiss").addEventListener("click", dismissRequest);
$("notify").addEventListener("click", toggleNotifications);
document.addEventListener("visibilitychange", () => {
  if (state.open && isViewing(state.open)) {
    const held = conversation(state.open);
    if (held.messages.size) markRead(state.open, Math.max(...held.messages.keys()));
    renderPeople();
    renderRooms();
  }
});

if (typeof io !== "function") {
  fieldError("auth-error", "The Socket.IO client did not load; the page cannot chat.");
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
