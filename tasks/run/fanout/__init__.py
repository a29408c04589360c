"""Submit, wait, recover: staging, invoking within the cap, notifications, reconciliation, outcomes."""
