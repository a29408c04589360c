"""Planning a run: names in S3, batches, the manifest, resume and retry, the estimate."""
