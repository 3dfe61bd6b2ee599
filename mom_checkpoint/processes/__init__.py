"""A job's processes on this node: the tree found from pbs_mom's session, its owner's identity, what a
restored process may reach, and how the processes end.
"""
