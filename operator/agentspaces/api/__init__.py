"""The Workspace and WorkspaceClass API: schema, typed views, condition vocabulary."""
