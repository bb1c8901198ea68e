"""The Kafka shell of a member: the consumer group (poll, backpressure, rebalance, commit), the
offsets it commits, dedupe markers, dead letters, topics, and the followers of compacted topics."""
