"""
Registers C{twistd mpush}; everything else is imported only when it runs.
"""

from twisted.application.service import ServiceMaker

mpush = ServiceMaker(
    "mpush",
    "mpush.tap",
    "MPush-compatible long-connection push server",
    "mpush",
)
