"""Seed 004's REST half (klein), plus ``/metrics``, ``/healthz``, ``/static/`` and ``/socket.io/``.

Parameters come from the query string, form fields or a JSON object body, whichever the
client used (the seed's clients used all three; a JSON body sent with a form content type
counts as JSON); ``contact`` and ``contactID`` are the same parameter and name a user by
id or by username. HEAD is answered only where nothing is done (the page, files, health).
Replies are JSON; every failure is ``{"error": "..."}`` with status 400 (413 for an
oversized body), mapped in ``api.ERRORS``.
"""

from __future__ import annotations

import functools
import json
import os
from urllib.parse import parse_qs

from klein import Klein
from twisted.logger import Logger
from twisted.web import pages, resource, static
from werkzeug.exceptions import MethodNotAllowed, NotFound

from chatserv import errors
from chatserv.domain.login import Password
from chatserv.limits import QuietLog
from chatserv.model import HistoryBounds
from chatserv.text import UnencodableText
from chatserv.web import api
from chatserv.web.metrics import CONTENT_TYPE as METRICS_TYPE
from chatserv.wire import BadRequest, MalformedJSON, NotAnObject, json_object

log = Logger()
quiet = QuietLog(log)  # bounds what clients can make us log

STATIC = os.path.join(os.path.dirname(__file__), "static")
BOTH = ["GET", "POST"]
JSON = b"application/json"
FORM = b"application/x-www-form-urlencoded"
MAX_PAGE = 500  # entries one history or conversations request may ask for
# The page loads only its own scripts and talks only to its own origin: markup smuggled into
# a message could not run even if it were ever rendered as HTML.
CHAT_PAGE_POLICY = b"default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


def dumps(payload) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def read_params(request) -> dict:
    """Query string and form fields, overlaid by a JSON object body when there is one."""
    params = {}
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    body = request.content.read() if request.content is not None else b""
    is_json = content_type == JSON or (content_type != b"multipart/form-data"
                                       and body.lstrip().startswith(b"{"))
    args = request.args
    if is_json and content_type == FORM:
        # `curl -d '{...}'`, jQuery's $.post of a string: a JSON body labelled as a form, which
        # the form parser took for one field named after the whole object. Only the query
        # string holds fields then.
        args = parse_qs(request.uri.partition(b"?")[2], keep_blank_values=True)
    try:
        for name, values in args.items():
            if values:
                params[name.decode("utf-8")] = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("parameters must be UTF-8") from None
    if is_json:
        try:
            params.update(json_object(body))
        except MalformedJSON:
            raise BadRequest("malformed JSON body") from None
        except NotAnObject:
            raise BadRequest("the JSON body must be an object") from None
        except UnencodableText as exc:
            raise BadRequest(str(exc)) from None
    return params


def text(params: dict, name: str, *aliases: str) -> str:
    for key in (name, *aliases):
        value = params.get(key)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise BadRequest(f"{key} must be a non-empty string")
            return value
    raise BadRequest(f"missing parameter: {name}")


def reference(params: dict, *names: str):
    """The first of ``names`` present (a str, or an int from JSON); BadRequest if none is."""
    for key in names:
        if params.get(key) is not None:
            return params[key]
    raise BadRequest(f"missing parameter: {names[0]}")


def group_id(value) -> int:
    found = api.whole_number(value)
    if found is None:
        raise BadRequest("groupID must be a group id")
    return found


def message_id(params: dict, name: str) -> int | None:
    """An optional message id (``before``, ``message_id``)."""
    if params.get(name) is None:
        return None
    found = api.whole_number(params[name])
    if found is None or not 0 <= found <= api.MAX_ID:
        raise BadRequest(f"{name} must be a message id")
    return found


def page_size(params: dict) -> int | None:
    """The optional ``limit``: how many entries, from 1 to MAX_PAGE (larger asks get MAX_PAGE)."""
    if params.get("limit") is None:
        return None
    found = api.whole_number(params["limit"])
    if found is None or found < 1:
        raise BadRequest("limit must be a whole number above 0")
    return min(found, MAX_PAGE)


class StaticFiles(static.File):
    """The files under chatserv/web/static, without directory listings."""

    def directoryListing(self):
        return pages.notFound()

    def getChild(self, path, request):
        if b"\x00" in path:  # no file has one, and the OS refuses to look one up
            return pages.notFound()
        return super().getChild(path, request)


class Root(resource.Resource):
    """In front of klein: a URL that is not UTF-8 gets 400 (klein would log a traceback), and a
    CORS preflight is answered, so a front end served from elsewhere may call the API."""

    isLeaf = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def render(self, request):
        try:
            request.getRequestHostname().decode("utf-8")
            for segment in request.postpath:
                segment.decode("utf-8")
        except UnicodeDecodeError:
            request.setResponseCode(400)
            request.setHeader(b"content-type", JSON)
            return dumps({"error": "the URL must be UTF-8"})
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-origin", b"*")
            request.setHeader(b"access-control-allow-methods", b"GET, POST")
            request.setHeader(b"access-control-allow-headers", b"content-type")
            return b""
        return self.inner.render(request)


def endpoint(method):
    """A JSON endpoint: parse the parameters, call, reply; failures through the error table."""

    @functools.wraps(method)
    async def wrapper(self, request):
        request.setHeader(b"content-type", JSON)
        request.setHeader(b"access-control-allow-origin", b"*")
        if request.method == b"HEAD":  # HEAD must never act: these endpoints all may
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, POST")
            return dumps({"error": "Method not allowed"})
        timer = self.port.metrics.rest_timer(method.__name__)
        try:
            result = await method(self, request, read_params(request))
        except Exception as e:
            try:
                status, message = api.ERRORS.reply(e)
            except Exception:
                quiet.failure("unexpected failure in {path}", path=request.path)
                status, message = 500, "Internal server error"
            self.counters["errors"] += 1
            request.setResponseCode(status)
            return dumps({"error": message})
        finally:
            timer.stop()
        return dumps(result)

    return wrapper


class WebAPI:
    app = Klein()

    def __init__(self, port):
        self.port = port
        self.service = port.service
        self.sessions = port.web_sessions
        self.counters = port.counters

    def _user(self, params):
        return self.sessions.get(params.get("sessionID")).user

    @app.route("/", methods=["GET"])
    def hello(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Hello World"

    @app.route("/register", methods=BOTH)
    @endpoint
    async def register(self, request, params):
        username, password = text(params, "username"), text(params, "password")
        public_key = params.get("public_key")
        if public_key is not None and not isinstance(public_key, str):
            raise BadRequest("public_key must be a string")
        user = await self.service.register(username, password, address=self.port.client_address(request))
        if public_key:
            await self.service.set_public_key(user, public_key)
        return {"message": "User registered successfully", "user_id": user.id}

    @app.route("/login", methods=BOTH)
    @endpoint
    async def login(self, request, params):
        username, password = text(params, "username"), text(params, "password")
        # the service's one login path throttles logins and limits hashes per address
        address = self.port.client_address(request)
        user = (await self.service.log_in(Password(username, password), address=address)).user
        session = await self.sessions.start(user)
        return {"sessionID": session.token, "user_id": user.id, "username": user.username}

    @app.route("/logout", methods=BOTH)
    @endpoint
    async def logout(self, request, params):
        self.sessions.end(self.sessions.get(params.get("sessionID")))
        return {"message": "Logged out"}

    @app.route("/addContact", methods=BOTH)
    @endpoint
    async def add_contact(self, request, params):
        user = self._user(params)
        other = api.user_reference(self.service, reference(params, "contact", "contactID"))
        await self.service.add_contact(user, other.username)
        return {"message": "Contact added", "contact_id": other.id}

    @app.route("/changeContact", methods=BOTH)
    @endpoint
    async def change_contact(self, request, params):
        user = self._user(params)
        other = api.user_reference(self.service, reference(params, "contact", "contactID"))
        status = text(params, "status")
        await self.service.set_contact(user, other.username, status)
        return {"message": "Contact changed", "contact_id": other.id, "status": status}

    @app.route("/getContacts", methods=BOTH)
    @endpoint
    async def get_contacts(self, request, params):
        return [api.contact_entry(u, status) for u, status in self.service.contacts(self._user(params))]

    @app.route("/getContactMessages", methods=BOTH)
    @endpoint
    async def get_contact_messages(self, request, params):
        user = self._user(params)
        other = api.user_reference(self.service, reference(params, "contact", "contactID"))
        history = await self._page(user, other, params)
        await self.service.mark_delivered(user, history)  # seen here: not news on other ports
        return [api.history_entry(m) for m in history]

    def _page(self, user, target, params):
        """One page of a conversation in one store read: the newest before ``before``, or the
        oldest after ``after`` when only that is given (both: the newest between them)."""
        before, after = message_id(params, "before"), message_id(params, "after")
        bounds = HistoryBounds(after_id=after, before_id=before, oldest=after is not None and before is None)
        return self.service.history_range(user, target, bounds, page_size(params) or self.port.limits.history)

    @app.route("/saveMessage", methods=BOTH)
    @endpoint
    async def save_message(self, request, params):
        session = self.sessions.get(params.get("sessionID"))
        recipient = api.user_reference(self.service, reference(params, "recipientID", "recipient_id"))
        content = text(params, "content")
        kind = params.get("type", "text")
        if not isinstance(kind, str):
            raise BadRequest("type must be a string")
        if not session.rate.allow():
            raise errors.RateLimited("slow down")
        message = await self.service.send_direct(session.user, recipient, content, kind)
        return {"message_id": message.id}

    # for the web chat page (chatserv/web/static): who is online, rooms by id, room history

    @app.route("/getPresence", methods=BOTH)
    @endpoint
    async def get_presence(self, request, params):
        return [api.presence_entry(u, self.service.is_online(u))
                for u, _ in self.service.contacts(self._user(params))]

    @app.route("/getGroups", methods=BOTH)
    @endpoint
    async def get_groups(self, request, params):
        return [api.group_entry(room) for room in self.service.rooms_of(self._user(params))]

    @app.route("/joinGroup", methods=BOTH)
    @endpoint
    async def join_group(self, request, params):
        room = await self.service.join_room(self._user(params), text(params, "group"), create=True,
                                            address=self.port.client_address(request))
        return api.group_entry(room)

    @app.route("/getGroupMessages", methods=BOTH)
    @endpoint
    async def get_group_messages(self, request, params):
        user = self._user(params)
        room = self.service.room_by_id(group_id(reference(params, "groupID", "group")))
        history = await self._page(user, room, params)
        return [api.history_entry(m) for m in history]

    @app.route("/getConversations", methods=BOTH)
    @endpoint
    async def get_conversations(self, request, params):
        user = self._user(params)
        found = await self.service.conversations(user, page_size(params) or self.port.limits.history,
                                                 message_id(params, "before"))
        return [api.conversation_entry(c, c.peer and self.service.contact_status(user, c.peer),
                                       bool(c.peer) and self.service.is_online(c.peer)) for c in found]

    @app.route("/markRead", methods=BOTH)
    @endpoint
    async def mark_read(self, request, params):
        user = self._user(params)
        up_to = message_id(params, "message_id")
        if params.get("groupID", params.get("group")) is not None:
            room = self.service.room_by_id(group_id(reference(params, "groupID", "group")))
            marked = await self.service.mark_read(user, room=room, up_to=up_to)
        else:
            other = api.user_reference(self.service, reference(params, "contact", "contactID"))
            marked = await self.service.mark_read(user, peer=other, up_to=up_to)
        return {"last_read_id": marked}

    @app.route("/chat", methods=["GET"])
    def chat_page(self, request):
        request.setHeader(b"content-security-policy", CHAT_PAGE_POLICY)
        return static.File(os.path.join(STATIC, "chat.html"))

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok"

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"content-type", METRICS_TYPE)
        return self.port.metrics.render()

    @app.route("/socket.io/", branch=True, methods=BOTH)
    def socket_io(self, request):
        return self.port.engine.resource

    @app.route("/static/", branch=True, methods=["GET"])
    def static_files(self, request):
        return StaticFiles(STATIC)

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        request.setResponseCode(404)
        request.setHeader(b"content-type", JSON)
        return dumps({"error": "Not found"})

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request, failure):
        request.setResponseCode(405)
        request.setHeader(b"content-type", JSON)
        return dumps({"error": "Method not allowed"})
