"""MLflow: the trainer callback, replay after an outage, the UI launcher, redaction of secrets."""
