"""Torch code: the sequential recommender, its training, evaluation and registry. No Kafka here.

Modules (one concept each):

- ``sasrec``     the model: ``SASRecConfig`` + ``SASRec`` (a Hugging Face ``PreTrainedModel``)
- ``text``       MiniLM title embeddings, offline, with a safetensors cache
- ``data``       file parsing, the item vocabulary (``PAD_ID = 0``, items from 1), leave-one-out
- ``train``      ``train`` / ``finetune`` with validation early stopping
- ``evaluate``   full-ranking HR@K / NDCG@K / coverage, popularity and co-occurrence baselines
- ``checkpoint`` checkpoint dir layout, save and (never-unpickling) load
- ``registry``   ``ModelRegistry``: versions and the atomic "current" pointer
- ``inference``  ``Recommender``: the API the stream workers call
- ``intent``     purchase intent: examples from typed events, a logistic model, its metrics
- ``cli``        ``train``, ``finetune``, ``evaluate``, ``models list|promote`` subcommands
"""
