"""Pure, synchronous serving logic the stream workers call: per-user state, popularity,
batched scoring with reasons, session counters (purchase-intent features), interest profiles
and metrics. No Kafka or Faust here, so all of it is unit-testable."""
