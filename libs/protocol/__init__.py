"""The bus protocol: subjects, schemas, Redis keys, error codes and the typed NATS layer."""

from .bus import Bus
from .errors import BusError, ErrorCode, error_for_code
from .keys import Keys
from .schema import Message
from .serving import Route, route
from .stream import StreamReader, StreamWriter
from .streaming import Stream
from .subjects import Endpoint, StreamEndpoint, Subjects

__all__ = [
    "Bus",
    "BusError",
    "Endpoint",
    "ErrorCode",
    "Keys",
    "Message",
    "Route",
    "Stream",
    "StreamEndpoint",
    "StreamReader",
    "StreamWriter",
    "Subjects",
    "error_for_code",
    "route",
]
