"""The study: token-matched scratch baselines, a cached sweep runner, and the report."""
