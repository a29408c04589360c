"""Asking questions of documents on a real-time endpoint with sticky sessions.

``session_client`` speaks the session wire contract (open, ask, stream, close) with boto3;
``saved_answers`` keeps each answered (document, question) pair in S3 so a run resumes without asking
it again; ``asker`` runs documents in parallel under the endpoint's shared concurrency cap; ``run`` and
``results`` are the flow's steps, ``merge`` a sharded ask run's merged table.
"""
