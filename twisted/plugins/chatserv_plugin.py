from twisted.application.service import ServiceMaker

chatserv = ServiceMaker("chatserv", "chatserv.tap", "One daemon serving several chat protocols.", "chatserv")
