"""Kafka transports (confluent-kafka) and the in-memory broker behind one interface."""
