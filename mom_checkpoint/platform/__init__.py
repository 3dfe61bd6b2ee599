"""The ground every other part stands on: errors and exit statuses, the configuration, the injectable
environment, logging, and file access that follows no user's path.
"""
