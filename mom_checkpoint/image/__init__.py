"""One checkpoint image: its manifest, digests, verification, CRIU's image files, and staging a copy for a
restore.
"""
