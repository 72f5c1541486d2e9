"""What runs in each Ray Train worker: the loop (Trainer), the DeepSpeed step, EMA, checkpoints, samples."""
