"""Per-pipeline transform chain (rename, cast, filter, mask, ...); see issue 3."""
