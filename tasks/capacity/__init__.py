"""The endpoint's shared cap: its Prefect global concurrency limit, leases, scale to zero."""
