"""Torch code: the sequential recommender, its training, evaluation and registry. No Kafka here."""
