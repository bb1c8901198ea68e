"""The operator's commands `llmroute produce | tail | status | dlq` (each module registers its
own; where Kafka is: `worker.cli.kafka_args`, the worker's own [kafka] / [topics] settings).

    common.py   a command run once a broker answers, reading a topic up to a snapshot of its
                end offsets, pacing, the stderr progress bar
    produce.py  JSONL / stdin -> RouteRequest records, rate-limited
    tail.py     follow responses or decisions, filtered, pretty or JSON
    status.py   group lag per partition, members, in-flight (scraped), batch jobs, dead letters
    dlq.py      list, show, purge; re-drive dead letters' original bytes, with a dry run that
                says what and why

Pure parts (parsing input lines, filters, formatting, planning a replay, pacing) take plain
values and are tested without a broker; the Kafka parts are tested against a real one.
"""
