"""The ``drive-run`` task: a run's progress reporting, background staging, cancel watch and
``RunDriver`` put together, within the endpoint's shared cap."""

from __future__ import annotations

from contextlib import closing

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.aws.sagemaker_runtime import InvokeSettings
from tasks.capacity.keeper import Chores
from tasks.capacity.limit import require_invocation_limit
from tasks.endpoint.usage import InstanceMeter
from tasks.run.fanout.cancel import CancelWatch, current_flow_run_id
from tasks.run.fanout.driver import RunDriver
from tasks.run.fanout.policy import POLLING, DriveOptions
from tasks.run.fanout.progress import ProgressLog, RunProgress
from tasks.run.fanout.run_queue import RunQueue
from tasks.run.fanout.spool import OutputSpool
from tasks.run.fanout.staging import PayloadStager, stage_payloads
from tasks.run.fanout.stats import DriveStats
from tasks.run.plan.batching import BatchPayload
from tasks.run.plan.layout import run_artifact_key
from tasks.run.plan.manifest import RunManifest
from tasks.run.plan.target import EndpointOutputs
from tasks.run.quoting import quoted
from tasks.settings import Profile


@task(name="drive-run", cache_policy=NO_CACHE)
def drive_run(
    profile: Profile,
    manifest: RunManifest,
    target: EndpointOutputs,
    queue: RunQueue,
    options: DriveOptions,
    *,
    payloads: list[BatchPayload],
    spool: OutputSpool | None,
    request_ttl_s: int | None,
    invocation_timeout_s: int | None,
) -> DriveStats:
    """Stage payloads and invoke them within the endpoint's shared cap until every batch is terminal."""
    cap = require_invocation_limit(target.endpoint)
    invoke = InvokeSettings(
        endpoint=target.endpoint,
        run_key=manifest.run_key,
        request_ttl_s=request_ttl_s,
        invocation_timeout_s=invocation_timeout_s,
        rate_per_second=profile.invoke_rate_per_second,
    )
    documents = sum(len(r.doc_ids) for r in manifest.batches.values() if r.parent is None)
    counts = manifest.document_counts()
    log = ProgressLog(documents, done_before=counts["completed"] + counts["failed"])
    key = run_artifact_key(manifest.run_key, "progress")
    # The run's Prefect API calls (slots, demand, cancel checks, progress) are made on one
    # background thread, in order: the driver's loop never waits on them.
    with (
        closing(CancelWatch(current_flow_run_id(), every_s=POLLING.cancel_every_s)) as cancel,
        Chores() as chores,
        RunProgress(documents, key=key, submit=chores.submit) as progress,
    ):

        def report(m: RunManifest) -> None:
            counts = m.document_counts()
            progress.update(counts["completed"] + counts["failed"])
            if line := log.line(counts["completed"], counts["failed"], counts["submitted"]):
                get_run_logger().info("run %s: %s", m.run_key, line)

        inline = {r.batch_id for r in manifest.batches.values() if r.inline and not r.terminal}
        stager = (
            PayloadStager(profile, manifest.run_key, payloads, inline=inline) if payloads else None
        )
        del payloads  # the stager holds the only reference: staged bytes are freed as it goes
        driver = RunDriver(
            profile,
            manifest,
            target,
            queue,
            invoke,
            options,
            cap=cap,
            on_progress=report,
            staging=stager,
            spool=spool,
            cancel=cancel,
            chores=chores,
        )
        # What the endpoint runs meanwhile is metered for the run's cost (summary).
        with InstanceMeter(profile, target.endpoint, every_s=POLLING.meter_every_s) as meter:
            if stager is None:
                stats = driver.run()
            else:
                staging = stage_payloads.submit(quoted(stager))
                try:
                    stats = driver.run()
                finally:
                    stager.stop()  # a no-op once everything is staged
                    staging.wait()
        stats.usage = meter.usage()
        return stats
