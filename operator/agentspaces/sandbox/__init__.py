"""Local emulators of the clouds and the one-command sandbox. Product code: users run it."""
