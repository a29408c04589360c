"""Sharded runs: which shard a document is in, the child flow runs, the parent that sums them."""
