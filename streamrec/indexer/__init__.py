"""FAISS candidate retrieval over the live catalog. No Kafka here.

>>> from streamrec.indexer import ItemIndex, load_or_rebuild
"""

from streamrec.indexer.base import MAX_ID_LEN, MAX_K, CandidateIndex
from streamrec.indexer.exact import ExactIndex
from streamrec.indexer.faiss_index import ItemIndex, load_or_rebuild, load_saved

__all__ = ["MAX_ID_LEN", "MAX_K", "CandidateIndex", "ExactIndex", "ItemIndex", "load_or_rebuild", "load_saved"]
