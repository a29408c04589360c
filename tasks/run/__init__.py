"""One document run, by stage: ``request`` (what a document sends) -> ``long`` (documents over the
context) -> ``plan`` (names, batches, the manifest, the estimate) -> ``fanout`` (stage, invoke
within the cap, notifications, reconcile, outcomes) -> ``results`` (outputs joined into tables,
summary, status, artifacts, the run's end)."""
