"""Encrypted backups: keys, object layout, and the backup/restore orchestration."""
