"""Developer tools, apart from the runtime: a synthetic shop, dataset replay, a local Kafka, the demo.

- :mod:`~streamrec.devtools.catalog`: the synthetic catalog's data (categories, brand names);
- :mod:`~streamrec.devtools.simulator`: the traffic model (:class:`ShopSimulator`) and its runner;
- :mod:`~streamrec.devtools.replay`: a real dataset (the ``data/beauty/`` format) replayed as events;
- :mod:`~streamrec.devtools.pacing`: the rate-limited sender both of those use;
- :mod:`~streamrec.devtools.localkafka`: a single-node Kafka for tests, benchmarks and the demo;
- :mod:`~streamrec.devtools.demo`: ``make demo``.

The runtime (``streams``, ``serving``, ``model``, ``indexer``) never imports from here; the CLI
does, lazily, for its ``simulate``/``replay``/``kafka`` commands.
"""
