"""streamrec: streaming, event-driven recommendations for online shops.

Kafka carries the shop's events and catalog; Faust workers keep per-user state, embed it with a
transformer, retrieve candidates with FAISS and publish recommendations back to Kafka.
"""

__version__ = "0.1.0"
