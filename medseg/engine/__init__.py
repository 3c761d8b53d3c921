"""Training loop, sliding-window inference and the case predictor."""
