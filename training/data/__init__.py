"""What a stage reads: the shard index and reader, bucketed batches, clip frames, precomputed latents."""
