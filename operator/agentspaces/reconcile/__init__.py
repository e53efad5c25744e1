"""The workspace state machine and the pure policies it consults."""
