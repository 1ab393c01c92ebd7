"""What goes to a Ray cluster with a job: the package, the settings as one document, and secrets
kept out of the Jobs API."""
