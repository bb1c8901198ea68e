"""The Kafka shell of a member.

    member      the consumer-group member (`Worker`): poll, backpressure, rebalance, commit
    records     the contract between this shell and the pipeline (`RecordInfo`, `Handled`,
                `Deferred`, the `Pipeline` protocol)
    intake      a fetched record to its request or its dead-letter reason
    publisher   the producer and every record the member writes
    transactions  responses, dedupe markers and offsets in one transaction per interval
                (`kafka.transactions`, off by default)
    control     the control-topic follower (operator commands to the services)
    service     the parts a member is assembled from (start / stop / on_control)
    table       reading a topic to its end, following a compacted topic
    offsets     contiguous-offset commits; dedupe: answered request ids; deadletter: the record
    journal     paid answers written as they arrive, published by the next owner after a crash
    topics      creating topics, partition counts, size limits; raw: reading unreadable records
    observer    the member's hooks (metrics, health); semcache_sync: the shared semantic cache

The pipeline meets this shell only through `records`; the member is assembled through
constructors (its services and publisher are passed in).
"""
