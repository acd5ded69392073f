"""Every IRC numeric and error reply the server sends, defined once.

A ``Numeric`` is a code and a template: the parameters after the client's nick, with
``{fields}`` filled in by ``format``. Replies are written as
``:<server> <code> <nick> <template>``; see RFC 1459/2812 and the modern IRC docs.

Fields that name one thing (``WORD_FIELDS``: a nick, a channel, a command) often echo what
a client sent, and a client may send anything as its last parameter: such a value with a
space in it, a leading colon or nothing at all would shift every parameter after it, so it
is shown as ``*``.
"""

from __future__ import annotations

import attrs

WORD_FIELDS = frozenset({"target", "channel", "command", "nick", "account", "mask", "server", "ident"})


def _word(value) -> str:
    text = str(value)
    return "*" if not text or " " in text or text.startswith(":") else text


@attrs.frozen
class Numeric:
    code: str
    template: str

    def params(self, **fields) -> str:
        return self.template.format_map({key: _word(value) if key in WORD_FIELDS else value
                                         for key, value in fields.items()})


class IRCError(Exception):
    """A handler's answer is an error numeric (not a domain failure)."""

    def __init__(self, numeric: Numeric, **fields):
        super().__init__(numeric.code)
        self.numeric = numeric
        self.fields = fields


# registration
RPL_WELCOME = Numeric("001", ":Welcome to the {network} IRC network {mask}")
RPL_YOURHOST = Numeric("002", ":Your host is {server}, running version {version}")
RPL_CREATED = Numeric("003", ":This server was created {created}")
RPL_MYINFO = Numeric("004", "{server} {version} {user_modes} {channel_modes} {parameter_modes}")
RPL_ISUPPORT = Numeric("005", "{tokens} :are supported by this server")
RPL_UMODEIS = Numeric("221", "{modes}")

# MOTD
RPL_MOTDSTART = Numeric("375", ":- {server} Message of the day - ")
RPL_MOTD = Numeric("372", ":- {line}")
RPL_ENDOFMOTD = Numeric("376", ":End of /MOTD command.")

# users
RPL_AWAY = Numeric("301", "{target} :{text}")
RPL_ISON = Numeric("303", ":{nicks}")
RPL_UNAWAY = Numeric("305", ":You are no longer marked as being away")
RPL_NOWAWAY = Numeric("306", ":You have been marked as being away")
RPL_WHOISUSER = Numeric("311", "{target} {ident} {host} * :{realname}")
RPL_WHOISSERVER = Numeric("312", "{target} {server} :{where}")
RPL_ENDOFWHO = Numeric("315", "{target} :End of WHO list")
RPL_ENDOFWHOIS = Numeric("318", "{target} :End of /WHOIS list")
RPL_WHOISCHANNELS = Numeric("319", "{target} :{channels}")
RPL_WHOISACCOUNT = Numeric("330", "{target} {account} :is logged in as")
RPL_WHOREPLY = Numeric("352", "{channel} {ident} {host} {server} {target} {flags} :0 {realname}")

# channels
RPL_LISTSTART = Numeric("321", "Channel :Users  Name")
RPL_LIST = Numeric("322", "{channel} {count} :{topic}")
RPL_LISTEND = Numeric("323", ":End of /LIST")
RPL_CHANNELMODEIS = Numeric("324", "{channel} {modes}")
RPL_CREATIONTIME = Numeric("329", "{channel} {created}")
RPL_NOTOPIC = Numeric("331", "{channel} :No topic is set")
RPL_TOPIC = Numeric("332", "{channel} :{topic}")
RPL_NAMREPLY = Numeric("353", "{kind} {channel} :{names}")
RPL_ENDOFNAMES = Numeric("366", "{channel} :End of /NAMES list")

# accounts and SASL (IRCv3)
RPL_LOGGEDIN = Numeric("900", "{mask} {account} :You are now logged in as {account}")
RPL_SASLSUCCESS = Numeric("903", ":SASL authentication successful")
ERR_SASLFAIL = Numeric("904", ":SASL authentication failed")
ERR_SASLTOOLONG = Numeric("905", ":SASL message too long")
ERR_SASLABORTED = Numeric("906", ":SASL authentication aborted")
ERR_SASLALREADY = Numeric("907", ":You have already authenticated")
RPL_SASLMECHS = Numeric("908", "PLAIN :are available SASL mechanisms")

# errors
RPL_TRYAGAIN = Numeric("263", "{command} :Server busy, try again")  # RFC 2812: a command dropped unprocessed
ERR_UNKNOWNERROR = Numeric("400", "{command} :{text}")
ERR_NOSUCHNICK = Numeric("401", "{target} :No such nick/channel")
ERR_NOSUCHCHANNEL = Numeric("403", "{target} :No such channel")
ERR_CANNOTSENDTOCHAN = Numeric("404", "{target} :Cannot send to channel")
ERR_TOOMANYCHANNELS = Numeric("405", "{target} :{text}")
ERR_TOOMANYTARGETS = Numeric("407", "{target} :Too many targets: this one and those after it got nothing")
ERR_INVALIDCAPCMD = Numeric("410", "{target} :Invalid CAP command")
ERR_NORECIPIENT = Numeric("411", ":No recipient given ({command})")
ERR_NOTEXTTOSEND = Numeric("412", ":No text to send")
ERR_INPUTTOOLONG = Numeric("417", ":Input line was too long")
ERR_UNKNOWNCOMMAND = Numeric("421", "{command} :Unknown command")
ERR_NONICKNAMEGIVEN = Numeric("431", ":No nickname given")
ERR_ERRONEUSNICKNAME = Numeric("432", "{target} :Erroneous nickname")
ERR_NICKNAMEINUSE = Numeric("433", "{target} :Nickname is already in use")
ERR_NICKNAMEREGISTERED = Numeric(
    "433", "{target} :Nickname is registered: log in with SASL or PASS, "
    "or take another nick and /msg NickServ IDENTIFY {target} <password>")
ERR_NICKNAMERESERVED = Numeric("433", "{target} :Nickname is another account's name")
ERR_USERNOTINCHANNEL = Numeric("441", "{target} {channel} :They aren't on that channel")
ERR_NOTONCHANNEL = Numeric("442", "{target} :You're not on that channel")
ERR_NOTREGISTERED = Numeric("451", ":You have not registered")
ERR_NEEDMOREPARAMS = Numeric("461", "{command} :Not enough parameters")
ERR_ALREADYREGISTERED = Numeric("462", ":You may not reregister")
ERR_PASSWDMISMATCH = Numeric("464", ":Password incorrect")
ERR_PASSWDREQUIRED = Numeric("464", ":This server needs a password: PASS <password> before NICK and USER")
ERR_UNKNOWNMODE = Numeric("472", "{target} :is unknown mode char to me")
ERR_CHANOPRIVSNEEDED = Numeric("482", "{target} :You're not channel operator")
ERR_UMODEUNKNOWNFLAG = Numeric("501", ":Unknown MODE flag")
ERR_USERSDONTMATCH = Numeric("502", ":Cant change mode for other users")
ERR_CANTSENDTOUSER = Numeric("531", "{target} :You are not permitted to send private messages to this user")

# channel modes, invitations, operators and server queries
RPL_TOPICWHOTIME = Numeric("333", "{channel} {by} {at}")
RPL_INVITING = Numeric("341", "{target} {channel}")
RPL_BANLIST = Numeric("367", "{channel} {mask} {by} {at}")
RPL_ENDOFBANLIST = Numeric("368", "{channel} :End of channel ban list")
ERR_CHANNELISFULL = Numeric("471", "{target} :Cannot join channel (+l)")
ERR_INVITEONLYCHAN = Numeric("473", "{target} :Cannot join channel (+i)")
ERR_BANNEDFROMCHAN = Numeric("474", "{target} :Cannot join channel (+b)")
ERR_BADCHANNELKEY = Numeric("475", "{target} :Cannot join channel (+k)")
ERR_BANLISTFULL = Numeric("478", "{target} b :Channel ban list is full")
ERR_USERONCHANNEL = Numeric("443", "{target} {channel} :is already on channel")
ERR_INVALIDKEY = Numeric("525", "{target} :Key is not well-formed")
ERR_INVALIDMODEPARAM = Numeric("696", "{target} {mode} {param} :{text}")
RPL_YOUREOPER = Numeric("381", ":You are now an IRC operator")
ERR_NOOPERHOST = Numeric("491", ":No O-lines for your host")
ERR_NOPRIVILEGES = Numeric("481", ":Permission Denied- You're not an IRC operator")
RPL_WHOISOPERATOR = Numeric("313", "{target} :is an IRC operator")
RPL_VERSION = Numeric("351", "{version} {server} :{comments}")
RPL_TIME = Numeric("391", "{server} {timestamp} :{time}")
RPL_INFO = Numeric("371", ":{line}")
RPL_ENDOFINFO = Numeric("374", ":End of INFO list")
ERR_NOSUCHSERVER = Numeric("402", "{target} :No such server")
RPL_LUSERCLIENT = Numeric("251", ":There are {users} users and {invisible} invisible on 1 servers")
RPL_LUSEROP = Numeric("252", "{count} :IRC Operators online")
RPL_LUSERUNKNOWN = Numeric("253", "{count} :unknown connection(s)")
RPL_LUSERCHANNELS = Numeric("254", "{count} :channels formed")
RPL_LUSERME = Numeric("255", ":I have {clients} clients and 0 servers")
RPL_LOCALUSERS = Numeric("265", "{count} {most} :Current local users {count}, max {most}")
RPL_GLOBALUSERS = Numeric("266", "{count} {most} :Current global users {count}, max {most}")
RPL_WHOWASUSER = Numeric("314", "{target} {user} {host} * :{realname}")
RPL_ENDOFWHOWAS = Numeric("369", "{target} :End of WHOWAS")
ERR_WASNOSUCHNICK = Numeric("406", "{target} :There was no such nickname")
RPL_WHOSPCRPL = Numeric("354", "{fields}")
RPL_USERHOST = Numeric("302", ":{replies}")


class Fail(Exception):
    """An IRCv3 standard reply: ``FAIL <command> <code> [context...] :<text>``."""

    def __init__(self, command: str, code: str, *context: str):
        super().__init__(code)
        self.command = command
        self.code = code
        self.context = context
        self.text = FAIL_TEXTS[code]


FAIL_TEXTS = {
    "ACCOUNT_EXISTS": "That account name is taken",
    "ALREADY_AUTHENTICATED": "You are already logged in",
    "BAD_ACCOUNT_NAME": "Account names follow nick rules (letters, digits, -_[]\\`^{|}), at most 32",
    "INVALID_MSGREFTYPE": "References are msgid=<id> or timestamp=<ISO 8601>, or * for LATEST",
    "INVALID_PARAMS": "Invalid parameters",
    "INVALID_TARGET": "No such channel or nick, or you may not read it",
    "INVALID_UTF8": "Message rejected: this network takes UTF-8 only (UTF8ONLY)",
    "NEED_MORE_PARAMS": "Not enough parameters",
    "UNACCEPTABLE_PASSWORD": "The password may not be empty or *",
}
