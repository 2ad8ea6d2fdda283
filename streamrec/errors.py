"""One exception root for everything streamrec raises on purpose.

Bad arguments to a function raise ``ValueError`` (or a subclass below); ``assert`` is only used
for internal tensor invariants.
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Root of all streamrec errors: catch this to handle any of them."""


class ConfigError(StreamrecError, ValueError):
    """A setting has a bad value; the message names the setting and the value."""


class SchemaError(StreamrecError, ValueError):
    """A message does not match its contract; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DatasetError(StreamrecError, ValueError):
    """A dataset file (``sequences.txt``, ``item_text.tsv``) is missing or malformed; the message
    names the file and, where there is one, the line."""


class DeliveryError(StreamrecError):
    """Kafka did not acknowledge one or more produced messages."""


class KafkaRuntimeError(StreamrecError):
    """The local Kafka broker could not be prepared, started or reached."""


class CheckpointError(StreamrecError):
    """A model checkpoint or index file is missing, corrupt or incompatible."""


class NoModelError(CheckpointError):
    """The model registry holds no current model."""


class KafkaAuthError(KafkaRuntimeError):
    """Kafka refused the connection's credentials or TLS handshake (wrong password, unknown user,
    untrusted certificate): retrying will not help, so clients stop at once with this error."""
