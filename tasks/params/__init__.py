"""The flows' parameters as typed groups: one owner for every default (flows, CLI, manifests)."""
