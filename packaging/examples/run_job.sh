#!/bin/sh
# The seed's run_job.sh: a checkpointable job in TORQUE's short form, checkpointed every minute
# (c=N: every N minutes; on TORQUE 5.1.2 to 6.1.x only with `mom-checkpoint tick` running, as the
# README says: their pbs_mom never fires periodic checkpoints itself). Submit it with
#
#   qsub -c c=1 run_job.sh
#
# or just `qsub run_job.sh`: the #PBS -c line below says the same.
#PBS -N run_job
#PBS -c c=1
#PBS -j oe

cd "$PBS_O_WORKDIR" || exit 1

# The seed ran my_application.exe here; this one counts once a second.
i=0
while [ "$i" -lt 3600 ]; do
    i=$((i + 1))
    echo "$i"
    sleep 1
done
