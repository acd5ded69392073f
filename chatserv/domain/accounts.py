"""Accounts: register, authenticate (through the login throttle), guests, login tokens and
IP bans. A mixin of ``ChatService``; its state is made by ``_init_accounts``."""

from __future__ import annotations

import hashlib
import hmac
import re

import attrs
from twisted.internet.defer import Deferred

from chatserv import errors
from chatserv.credentials import LoginThrottle, new_salt, password_digest
from chatserv.domain.common import deferred, keepable
from chatserv.model import User, fold

# A name every protocol can carry: IRC nick rules, which the other wires accept too.
_USERNAME = re.compile(r"[A-Za-z_\[\]\\`^{|}][A-Za-z0-9_\-\[\]\\`^{|}]{0,31}\Z")
RESERVED_NAMES = frozenset({"nickserv", "chanserv", "server", "system"})


class Accounts:
    def _init_accounts(self):
        self._salt_secret: bytes | None = None  # the store's, so fake salts outlive restarts
        self._users: dict[int, User] = {}
        self._user_keys: dict[str, User] = {}
        self._guests: dict[str, User] = {}
        self._registering: set[str] = set()  # names being registered while the store writes them
        self._tokens: list[tuple[str, int, float, float]] = []
        self.token_watchers: list = []  # the web ports' session IDs: other nodes' reach them
        self.throttle = LoginThrottle(lambda: self.clock.seconds(), self.limits)
        self.bans: set[str] = set()

    def _load_accounts(self, snapshot):
        for user in snapshot.users:
            self._users[user.id] = user
            self._user_keys[fold(user.username)] = user
        self.bans = set(snapshot.bans)
        self._tokens = list(snapshot.tokens)
        self._salt_secret = snapshot.salt_secret

    def validate_username(self, name) -> str:
        if not isinstance(name, str) or not _USERNAME.match(name):
            raise errors.InvalidUsername()
        if fold(name) in RESERVED_NAMES:
            raise errors.ReservedUsername()
        return name

    def _check_free(self, name, guest: User | None = None):
        holder = self._guests.get(fold(name)) or self._aliases.get(fold(name))
        if (fold(name) in self._user_keys or fold(name) in self._registering
                or (holder is not None and holder is not guest) or self._taken_elsewhere(name, guest)):
            raise errors.UsernameTaken()

    def _taken_elsewhere(self, name, user: User | None) -> bool:
        """Whether someone online on another node goes by ``name``."""
        key = fold(name)
        return any(fold(ref.username) == key and (user is None or ref.id != user.id)
                   for ref in self.bus.names_elsewhere())

    def user(self, name) -> User:
        """The registered user of that name (case-insensitive), else NotFound."""
        user = self._user_keys.get(fold(name)) if isinstance(name, str) else None
        if user is None:
            raise errors.UserNotFound()
        return user

    def user_or_guest(self, name) -> User:
        """A registered user, an online guest, or whoever goes by that name now; else NotFound."""
        if isinstance(name, str):
            found = self._guests.get(fold(name)) or self._aliases.get(fold(name))
            if found is not None:
                return found
            for ref in self.bus.names_elsewhere():  # a guest on another node
                if ref.guest and fold(ref.username) == fold(name):
                    return self._guest_by_id(ref.id)
        return self.user(name)

    def user_by_id(self, user_id) -> User:
        user = self._users.get(user_id)
        if user is None:
            raise errors.UserNotFound()
        return user

    def users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: fold(u.username))

    def is_registered(self, name) -> bool:
        return isinstance(name, str) and fold(name) in self._user_keys

    def salt_for(self, name: str) -> str:
        """A user's salt; an unknown name gets a stable fake one, so salts reveal no accounts."""
        user = self._user_keys.get(fold(name))
        if user is not None:
            return user.salt
        mac = hmac.new(self._salt_secret, fold(name).encode(), hashlib.sha256).digest()
        return str(10**31 + int.from_bytes(mac, "big") % (9 * 10**31))

    @deferred
    async def register(self, username, password, *, guest: User | None = None, address: str = "") -> User:
        """Create an account from a plain password.

        ``guest``: the caller's own guest user, whose name may become the account's (the guest
        keeps its sessions until the caller moves them to the account). ``address``: the
        caller's, whose hashes in flight are limited as its logins are.
        """
        self.validate_username(username)
        if not isinstance(password, str) or not password:
            raise errors.EmptyPassword()
        keepable(password, "password")
        self._check_free(username, guest)
        salt = new_salt()
        return await self.register_digest(username, salt, password_digest(salt, password), guest=guest,
                                          address=address)

    @deferred
    async def register_digest(self, username, salt, digest, *, guest: User | None = None,
                              address: str = "") -> User:
        """Create an account from ``sha256_hex(salt + password)`` (the salted port's form)."""
        self.validate_username(username)
        if not isinstance(digest, str) or not digest:
            raise errors.EmptyPassword()
        keepable(digest, "password")
        self._check_free(username, guest)
        with self.throttle.hashing(address):
            verifier = await self.hasher.make_verifier(digest)
        self._check_free(username, guest)  # another registration may have won while we hashed
        user = User(0, username, salt, verifier, self.clock.seconds())
        self._registering.add(fold(username))
        try:
            user.id = await self.store.add_user(user)  # stored first, then cached
        finally:
            self._registering.discard(fold(username))
        self._users[user.id] = user
        self._user_keys[fold(username)] = user
        self.bus.notify("user", user.id)
        self.stats["registrations"] += 1
        return user

    @deferred
    async def authenticate(self, username, password, address: str = "") -> User:
        """The user, if the plain password is theirs; else BadCredentials."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise errors.BadCredentials("bad credentials")
        keepable(username, "username")
        keepable(password, "password")
        user = self._user_keys.get(fold(username))
        salt = user.salt if user else self.salt_for(username)
        return await self.authenticate_digest(username, password_digest(salt, password), address)

    @deferred
    async def authenticate_digest(self, username, digest, address: str = "") -> User:
        """The user, if ``digest`` is their ``sha256_hex(salt + password)``; else BadCredentials.

        ``self.throttle`` admits the check (RateLimited: this name or address is locked out;
        Busy: this address has its logins in flight), and the hasher may answer Busy; neither
        counts as a failure.
        """
        if not isinstance(username, str) or not isinstance(digest, str):
            raise errors.BadCredentials("bad credentials")
        keepable(username, "username")
        keepable(digest, "password")
        user = self._user_keys.get(fold(username))
        with self.throttle.attempt(fold(username), address, account=user is not None) as attempt:
            ok = await self.hasher.check(user.verifier if user else None, digest)
            attempt.checked(ok)
        if not ok:
            self.stats["login_failures"] += 1
            raise errors.BadCredentials("bad credentials")
        self.stats["logins"] += 1
        return user

    @deferred
    async def set_public_key(self, user: User, key: str | None) -> None:
        key = key if key is None else keepable(key, "public key")
        await self.store.update_user(attrs.evolve(user, public_key=key))
        user.public_key = key
        self.bus.notify("user", user.id)

    def guest(self, name) -> User:
        """A temporary user for this name; it lives while it has sessions and is never stored.

        Its id is never reused, even after a restart (the store keeps the lowest one handed out,
        and that write goes before any message naming the id), so no later guest reads its
        conversations.
        """
        self.validate_username(name)
        self._check_free(name)
        user = User(self.store.new_guest_id(), name, "", None, self.clock.seconds())
        self._guests[fold(name)] = user
        return user

    # login tokens: seed 004's session IDs, kept so that a restart keeps web users logged in

    def saved_tokens(self) -> list[tuple[str, User, float, float]]:
        """The tokens the store had at start: (digest, user, created at, last used)."""
        return [(digest, self._users[uid], created, used) for digest, uid, created, used in self._tokens
                if uid in self._users]

    def save_token(self, digest: str, user: User, created_at: float, last_used: float) -> Deferred:
        self.bus.notify("token", [digest, user.id, created_at, last_used])
        return self.store.save_token(digest, user.id, created_at, last_used)

    def drop_token(self, digest: str) -> Deferred:
        self.bus.notify("token_dropped", digest)
        return self.store.remove_token(digest)

    # IP bans (seed 002's admin-managed list, honoured wherever a protocol checks it)

    def is_banned(self, address: str) -> bool:
        """``address`` as ``bans.ban_key`` writes it."""
        return address in self.bans

    @deferred
    async def ban(self, address: str) -> None:
        """Honoured at once (a ban must not wait for a disk); taken back if it cannot be stored."""
        fresh = address not in self.bans
        self.bans.add(address)
        try:
            await self.store.add_ban(address)
        except BaseException:
            if fresh:
                self.bans.discard(address)
            raise
        self.bus.notify("ban", address)

    @deferred
    async def unban(self, address: str) -> None:
        await self.store.remove_ban(address)
        self.bans.discard(address)
        self.bus.notify("unban", address)
