"""What the batch systems hand over and read back: pbs_mom's call forms, the checkpoint pointer, qstat's
output, periodic-checkpoint schedules, job keys.
"""
