"""How large an honest image of a job can be: more than that, in a folder the job's user may write,
is not read."""

from __future__ import annotations

from mom_checkpoint.processes import discovery

IMAGE_MARGIN = 64 * 1024 * 1024  # an image's files beyond the job's memory: CRIU's metadata, logs


def image_limit(job: discovery.JobProcesses, ghost_limit: int) -> int:
    """The most an honest image of this job holds: its memory, resident and swapped, twice over (CRIU
    writes each page once, plus its page maps and whatever the job allocates during the dump), what
    CRIU copies of the files the job holds that have no name left (discovery.unlinked_files: a
    ghost file, up to ``ghost_limit`` each, of every deleted regular file held or mapped; the pages
    of each memfd and shared anonymous mapping), and a margin for the rest. Nothing else the job's
    user controls adds to it: a descriptor of a file with a name (/dev/null, say) is not copied
    into the image, so it adds nothing. More than that, in a folder the job's user may write
    (job-user mode), is not read: the checkpoint is refused."""
    unlinked = sum(
        f.allocated if f.shared_memory else min(f.size, ghost_limit)
        for f in discovery.unlinked_files(job.tree)
    )
    return 2 * (job.resident_bytes + job.swap_bytes) + unlinked + IMAGE_MARGIN
