"""The ground floor every package stands on: `UserError`, dotted keys, config paths, atomic writes, YAML →
pydantic loading with one-line errors, and the digest. It imports nothing of svp (core <- model <- curation
<- training <- orchestration) and nothing heavy (no torch, Ray, DeepSpeed or MLflow)."""
