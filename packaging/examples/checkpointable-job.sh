#!/bin/sh
# A checkpointable job: checkpointed every 10 minutes, and whenever `qchkpt JOB` or `qhold JOB` asks
# (qhold checkpoints, then ends the job; `qrls JOB` restarts it from the image). The periodic ones
# need `mom-checkpoint tick` on TORQUE 5.1.2 to 6.1.x, whose pbs_mom never fires them itself (the
# README's "Periodic checkpoints"); qchkpt and qhold work everywhere.
# Submit it with
#
#   qsub -c enabled,periodic,interval=10 checkpointable-job.sh
#
# or just `qsub checkpointable-job.sh`: the #PBS -c line below says the same.
#PBS -N checkpointable
#PBS -c enabled,periodic,interval=10
#PBS -j oe

cd "$PBS_O_WORKDIR" || exit 1

# Your application goes here. This one counts once a second, so after a restart the output shows
# the count going on from the checkpoint instead of starting again at 1.
i=0
while [ "$i" -lt 3600 ]; do
    i=$((i + 1))
    echo "$i"
    sleep 1
done
