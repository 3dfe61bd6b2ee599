"""The node's spool of generations: its folders, locks, retention, space, listings, metrics and restart
sessions.
"""
