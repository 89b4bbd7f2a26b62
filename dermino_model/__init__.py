"""DermINO hybrid pretraining (first-party plugin)."""
