"""finwatch: topic and sentiment of a live stream of financial posts, per-topic trends, alerts on
negative surges. See docs/finwatch.md."""
