"""Pure builders that render what a workspace VM boots with."""
