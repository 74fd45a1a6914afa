"""``edgepipe run``: convert → deploy → profile on every device → one HTML report."""
