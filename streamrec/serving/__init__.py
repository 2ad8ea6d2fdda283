"""Pure, synchronous serving logic the stream workers call: per-user state, popularity,
batched scoring and metrics. No Kafka or Faust here, so all of it is unit-testable."""
