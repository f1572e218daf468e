"""The bus protocol: subjects, schemas, Redis keys, error codes and the typed NATS layer."""

from .bus import Bus, Route, Stream, route
from .errors import BusError, ErrorCode, error_for_code
from .keys import Keys
from .schema import Message
from .stream import StreamReader, StreamWriter
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
