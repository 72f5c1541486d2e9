"""MLflow: the stage and pipeline runs, the metrics sent from the workers, the console progress board."""
