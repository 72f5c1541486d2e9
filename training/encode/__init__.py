"""`svp encode`: latents and caption embeddings computed once, as companion shards."""
