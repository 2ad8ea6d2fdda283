"""What shops import: send events and catalog updates, receive recommendations.

>>> from streamrec.client import EventProducer, RecommendationSubscriber   # doctest: +SKIP
"""

from streamrec.client.producer import EventProducer
from streamrec.client.subscriber import RecommendationSubscriber

__all__ = ["EventProducer", "RecommendationSubscriber"]
