"""The run configuration: typed dataclasses per concern, the YAML/override loader, named recipes."""
