"""IOC (intelligent operations centre) API: alerts in, REST and WebSockets out."""

from ioc.app import create_app
from ioc.server import ApiServer
from ioc.settings import IocSettings

__all__ = ["ApiServer", "IocSettings", "create_app"]
