// The real socket.io-client 4.x, driven line by line by a test (tests/test_web_socketio.py).
//
//   node client.js <url> <sessionID> <default|websocket|polling> [seconds]
//
// stdin, one JSON object a line: {"emit": name, "data": {...}} (an "ack": true asks for the
// server's acknowledgement), or {"close": true}. stdout, one JSON object a line: every
// event the server emits ({"event": name, "data": ...}) and the client's own open (with
// its first transport), upgrade, connect, connect_error and disconnect. The process always
// exits by itself: when stdin ends, after a disconnect, or after the time limit (default 20 s).
"use strict";
const { io } = require("socket.io-client");
const readline = require("readline");

const [url, sessionID, transports, seconds] = process.argv.slice(2);
const options = { query: { sessionID }, reconnection: false };
if (transports !== "default") options.transports = [transports]; // "websocket" or "polling"

const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
const finish = (code) => process.stdout.write("", () => process.exit(code));
setTimeout(() => { out({ event: "timeout" }); finish(2); }, 1000 * Number(seconds || 20)).unref();

const socket = io(url, options);
socket.io.on("open", () => {
  out({ event: "open", transport: socket.io.engine.transport.name });
  socket.io.engine.on("upgrade", (transport) => out({ event: "upgrade", transport: transport.name }));
});
socket.on("connect", () => out({ event: "connect" }));
socket.on("connect_error", (err) => out({ event: "connect_error", message: err.message }));
socket.on("disconnect", (reason) => { out({ event: "disconnect", reason }); finish(0); });
socket.onAny((event, data) => out({ event, data }));

const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  const command = JSON.parse(line);
  if (command.close) {
    socket.disconnect();
  } else if (command.ack) {
    socket.emit(command.emit, command.data, (reply) => out({ event: "ack", name: command.emit, data: reply }));
  } else {
    socket.emit(command.emit, command.data);
  }
});
input.on("close", () => { socket.disconnect(); finish(0); });
