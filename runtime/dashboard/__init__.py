"""The scheduler's HTTP dashboard: live pages, Prometheus ``/metrics`` and a JSON API."""
