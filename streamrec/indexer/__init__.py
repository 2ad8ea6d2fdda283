"""FAISS candidate retrieval over the live catalog. No Kafka here."""
