#!/bin/sh
# The seed's resume_job.sh: restart a checkpointed job as a new job, from its newest complete,
# verified checkpoint. Replace JOB_ID below with the checkpointed job's id, as qsub printed it when
# that job was submitted (e.g. 42.head; `qstat -x 42` or `tracejob 42` show jobs that have ended,
# and as root on the node `mom-checkpoint list` lists every job id with a checkpoint), then
#
#   qsub resume_job.sh
#
# No folder to look up by hand: mom-restart finds the image, checks it against its manifest and
# stays in the foreground as the restored application until it ends; this job's exit status is the
# application's. Restoring needs root, so this goes through sudo: the administrator installs the
# rule in /usr/share/doc/mom-checkpoint/sudoers-mom-restart once per node, and --own restores only
# checkpoints of the user who submits this job.
#PBS -N resume_job
#PBS -j oe

# mom-restart is in /usr/sbin (packages) or /usr/local/sbin (make install): not on users' PATH.
PATH=/usr/sbin:/usr/local/sbin:$PATH

exec sudo -n mom-restart --own --job JOB_ID --cwd "$PBS_O_WORKDIR"
