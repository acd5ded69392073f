"""The domain, split by concern; ``chatserv.service.ChatService`` ties the parts together.

accounts (register, authenticate, guests, tokens, IP bans), contacts (contacts and blocks),
rooms and room_settings (rooms, membership, topics, limits; settings, modes and roles),
messages (send, history, inbox and delivery, read state), presence (sessions on this node,
who is online, names). Each part is a mixin of ``ChatService`` that makes its own state in
``_init_<part>``; none knows a wire format, and every write goes to the store first.
"""
