"""The pipeline file (curate → filter → training stages) with fingerprinted reruns: `svp pipeline plan|run`.

`spec` reads and validates the file, `steps` fingerprints and runs the curation steps, `plan` decides every
step (skip / run / rerun, and why) without running anything, `run` executes the plan under one MLflow parent
run, `jobs` submits it to a Ray cluster as a Ray job.
"""
