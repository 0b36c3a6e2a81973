"""Adapters to the outside world: Secrets Manager, the Flux Schnell HTTP API, S3 and DynamoDB."""
