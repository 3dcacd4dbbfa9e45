"""Environment variables that connect the backends' scripts with the trainer (one place for each)."""

# The trainer's rank 0 writes one word here at exit: complete | preempted | failed.
STATUS_ENV = "FTCTL_STATUS_FILE"
# Its existence asks the trainer to checkpoint and stop at the next step boundary (Slurm's batch
# shell gets the time-limit signal; signalling torchrun itself would kill it).
STOP_ENV = "FTCTL_STOP_FILE"
