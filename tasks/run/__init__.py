"""One document run, module by module in the order data flows: ``corpus`` (rows in, rejected
rows with reasons) -> ``prompts`` -> ``batching`` (payloads, run key) -> ``layout`` (every key,
URI, InferenceId and queue name of a run) -> ``manifest`` (batch state in S3) -> ``staging``
(payloads to S3) -> ``capacity`` (the endpoint's shared cap) -> ``driver`` (invoke, wait,
recover) -> ``reconcile`` -> ``outcomes`` -> ``spool`` -> ``aggregate``/``summary`` -> ``progress``."""
