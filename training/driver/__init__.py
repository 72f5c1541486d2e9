"""What runs on the driver: a stage's walk (StageRun), the step engine, fingerprints, locks, pipelines."""
