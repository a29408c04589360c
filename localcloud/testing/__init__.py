"""Test helpers: the echo model handler and builders for its model artifact."""
