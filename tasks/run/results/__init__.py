"""A run's results: batch outputs, aggregation into tables, summary, status, artifacts, the run's end."""
