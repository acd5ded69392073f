"""Contacts and blocks: one relation (owner, contact, status), stored, and cached here in
``ContactsCache``, which the bus's directory reads. A mixin of ``ChatService``."""

from __future__ import annotations

import collections

from chatserv import errors, events
from chatserv.domain.common import deferred
from chatserv.model import CONTACT_STATUSES, User, fold


class ContactsCache:
    """The store's contacts table, indexed both ways: who keeps whom, and who blocked whom.
    Changed only after the store took the write."""

    def __init__(self):
        self._status: dict[int, dict[int, str]] = collections.defaultdict(dict)  # owner -> contact -> status
        self._owners: dict[int, set[int]] = collections.defaultdict(set)  # contact -> owners
        self._blockers: dict[int, set[int]] = collections.defaultdict(set)  # contact -> who blocked it
        self._before_block: dict[tuple[int, int], str] = {}  # (owner, contact): status a block replaced

    def set(self, owner: int, contact: int, status: str, before_block: str | None = None) -> None:
        self._status[owner][contact] = status
        self._owners[contact].add(owner)
        if status == "blocked":
            self._blockers[contact].add(owner)
        else:
            self._blockers[contact].discard(owner)
        if before_block is not None:
            self._before_block[owner, contact] = before_block
        else:
            self._before_block.pop((owner, contact), None)

    def remove(self, owner: int, contact: int) -> None:
        self._status[owner].pop(contact, None)
        self._owners[contact].discard(owner)
        self._blockers[contact].discard(owner)
        self._before_block.pop((owner, contact), None)

    def of(self, owner: int) -> dict[int, str]:
        """The owner's contacts: contact id -> status."""
        return self._status.get(owner, {})

    def status(self, owner: int, contact: int) -> str | None:
        return self._status.get(owner, {}).get(contact)

    def owners_of(self, contact: int):
        """The ids of the users who keep ``contact`` (any status)."""
        return self._owners.get(contact, ())

    def blockers_of(self, user: int):
        return self._blockers.get(user) or ()

    def pairs(self) -> list[tuple[int, int]]:
        """Every (owner, contact) relation."""
        return [(owner, contact) for owner, contacts in self._status.items() for contact in contacts]

    def before_block(self, owner: int, contact: int) -> str | None:
        return self._before_block.get((owner, contact))


class Contacts:
    def _init_contacts(self):
        self.contacts_cache = ContactsCache()

    def _load_contacts(self, snapshot):
        for owner, contact, status, before_block in snapshot.contacts:
            self.contacts_cache.set(owner, contact, status, before_block)

    def contacts(self, owner: User) -> list[tuple[User, str]]:
        """The owner's contact list with each status, by name."""
        found = [(self._users[cid], status) for cid, status in self.contacts_cache.of(owner.id).items()]
        return sorted(found, key=lambda pair: fold(pair[0].username))

    def contact_status(self, owner: User, contact: User) -> str | None:
        return self.contacts_cache.status(owner.id, contact.id)

    def has_blocked(self, owner: User, other: User) -> bool:
        return owner.id in self.contacts_cache.blockers_of(other.id)

    def _registered_other(self, owner: User, name) -> User:
        if owner.guest:
            raise errors.GuestDenied()
        other = self.user(name)
        if other.id == owner.id:
            raise errors.ContactIsSelf()
        return other

    @deferred
    async def set_contact(self, owner: User, name, status="friend", *, keep_existing=False) -> User:
        """Create or change a contact relation; ``keep_existing`` leaves a present one as it is.

        A block remembers the status it replaces, for ``unblock`` to restore. Lifting a block is
        heard by the owner alone: the other was never told of the block, and is not "added".
        """
        if status not in CONTACT_STATUSES:
            raise errors.UnknownContactStatus()
        other = self._registered_other(owner, name)
        current = self.contact_status(owner, other)
        if current == status or (keep_existing and current is not None):
            return other
        before_block = current if status == "blocked" else None
        await self.store.set_contact(owner.id, other.id, status, before_block)
        self.contacts_cache.set(owner.id, other.id, status, before_block)
        event = events.ContactChanged(owner, other, status, current)
        self._publish(event, (owner.id,) if current == "blocked" else (owner.id, other.id))
        return other

    def add_contact(self, owner: User, name, status="friend"):
        return self.set_contact(owner, name, status, keep_existing=True)

    @deferred
    async def remove_contact(self, owner: User, name) -> User:
        other = self._registered_other(owner, name)
        previous = self.contact_status(owner, other)
        if previous is None:
            raise errors.ContactNotFound()
        await self.store.remove_contact(owner.id, other.id)
        self.contacts_cache.remove(owner.id, other.id)
        self._publish(events.ContactChanged(owner, other, None, previous), (owner.id, other.id))
        return other

    def block(self, owner: User, name):
        """Block ``name`` everywhere: the same relation as contact status ``blocked``."""
        return self.set_contact(owner, name, "blocked")

    @deferred
    async def unblock(self, owner: User, name) -> User:
        """Lift a block: the relation goes back to what the block replaced (a seed 000 or web
        contact keeps its status), or away if there was none."""
        other = self._registered_other(owner, name)
        if self.contact_status(owner, other) != "blocked":
            return other
        restored = self.contacts_cache.before_block(owner.id, other.id)
        if restored is None:
            return await self.remove_contact(owner, name)
        return await self.set_contact(owner, name, restored)
