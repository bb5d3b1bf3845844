"""The coordinator: plans a run, dispatches it (local pool or Celery), follows it, and
holds the `dtlr` command line. The one place that wires the services together."""
