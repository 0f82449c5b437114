"""MLflow: the trainer callback, the logged model, replay after an outage, the UI launcher, redaction of secrets."""
