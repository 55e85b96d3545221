"""Deployment files; deploy.chaos is the nats-chaos suite."""
