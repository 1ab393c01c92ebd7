"""The batch label job: Ray Data replicas (one engine each) label a run's pending chunks."""
