"""The local backend: the trainer on this machine, in the foreground."""
